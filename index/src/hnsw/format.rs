//! Saving and loading `hnsw.bin` (the layout is documented on the parent module).

use std::{collections::HashMap, path::Path, sync::Mutex};

use super::{graph::MAX_LEVEL, HnswIndex};
use crate::{
    persist::{Reader, Writer},
    spec::{HnswParams, MAX_EF, MAX_HNSW_M},
    Error, Result,
};

const FILE_NAME: &str = "hnsw.bin";
const MAGIC: [u8; 8] = *b"QVHNSW01";
const FORMAT_VERSION: u32 = 1;
/// Written as the entry point of an empty graph.
const NO_ENTRY_POINT: u32 = u32::MAX;

pub(super) fn save(index: &HnswIndex, dir: &Path) -> Result<()> {
    let dim = u32::try_from(index.dim).map_err(|_| {
        Error::InvalidArgument(format!("dimension {} does not fit the format", index.dim))
    })?;
    let mut writer = Writer::create(dir, FILE_NAME, &MAGIC, FORMAT_VERSION)?;
    writer.u32(dim)?;
    writer.metric(index.metric)?;
    writer.len(index.params.m)?;
    writer.len(index.params.ef_construction)?;
    writer.len(index.params.ef_search)?;
    writer.u64(index.insertions)?;
    writer.len(index.ids.len())?;
    writer.u32(index.entry_point.unwrap_or(NO_ENTRY_POINT))?;
    writer.u32(index.max_level as u32)?;
    writer.u64s(&index.ids)?;
    let flags: Vec<u8> = index
        .deleted
        .iter()
        .map(|&deleted| u8::from(deleted))
        .collect();
    writer.bytes(&flags)?;
    writer.bytes(&index.levels)?;
    writer.f32s(&index.vectors)?;
    writer.u32s(&index.layer0)?;
    writer.u32s(&index.upper)?;
    writer.commit()
}

pub(super) fn load(dir: &Path) -> Result<HnswIndex> {
    let mut reader = Reader::open(dir, FILE_NAME, &MAGIC, FORMAT_VERSION)?;
    let dim = reader.u32()? as usize;
    if dim == 0 {
        return Err(reader.corrupt("dimension is 0"));
    }
    let metric = reader.metric()?;
    let m = reader.len()?;
    let ef_construction = reader.len()?;
    let ef_search = reader.len()?;
    if !(2..=MAX_HNSW_M).contains(&m)
        || !(1..=MAX_EF).contains(&ef_construction)
        || !(1..=MAX_EF).contains(&ef_search)
    {
        return Err(reader.corrupt(format!(
            "parameters m={m} ef_construction={ef_construction} ef_search={ef_search} are out \
             of range"
        )));
    }
    let params = HnswParams {
        m,
        ef_construction,
        ef_search,
    };
    let insertions = reader.u64()?;
    let slots = reader.len()?;
    if slots >= NO_ENTRY_POINT as usize {
        return Err(reader.corrupt(format!("{slots} slots do not fit u32 slot numbers")));
    }
    let entry_point = reader.u32()?;
    let max_level = reader.u32()? as usize;
    // Each array read checks its byte count against what is left of the file before
    // allocating, so a corrupt slot count fails here rather than exhausting memory.
    let ids = reader.u64s(slots)?;
    let flags = reader.bytes(slots)?;
    let levels = reader.bytes(slots)?;
    let vector_values = slots
        .checked_mul(dim)
        .ok_or_else(|| reader.corrupt("slot count times dimension overflows"))?;
    let vectors = reader.f32s(vector_values)?;
    let layer0_stride = 1 + 2 * m;
    let layer0_values = slots
        .checked_mul(layer0_stride)
        .ok_or_else(|| reader.corrupt("layer 0 size overflows"))?;
    let layer0 = reader.u32s(layer0_values)?;
    let upper_stride = 1 + m;
    let mut upper_offsets = Vec::with_capacity(slots);
    let mut upper_values = 0usize;
    for &level in &levels {
        if level as usize > MAX_LEVEL {
            return Err(reader.corrupt(format!("a slot has level {level}, above {MAX_LEVEL}")));
        }
        upper_offsets.push(upper_values);
        upper_values += level as usize * upper_stride;
    }
    let upper = reader.u32s(upper_values)?;
    reader.finish()?;

    // The checksum matched, so what follows only catches files written by a faulty build
    // or edited by hand; a search must still never index out of bounds.
    let corrupt =
        |detail: String| Error::Corrupt(format!("{}: {detail}", dir.join(FILE_NAME).display()));
    let mut deleted = Vec::with_capacity(slots);
    for &flag in &flags {
        match flag {
            0 => deleted.push(false),
            1 => deleted.push(true),
            other => {
                return Err(corrupt(format!(
                    "tombstone flag {other} is neither 0 nor 1"
                )))
            }
        }
    }
    let check_block = |block: &[u32], level: usize, capacity: usize| -> Result<()> {
        let count = block[0] as usize;
        if count > capacity {
            return Err(corrupt(format!(
                "a layer-{level} neighbour list holds {count}, above its capacity {capacity}"
            )));
        }
        for &neighbour in &block[1..1 + count] {
            if neighbour as usize >= slots || (levels[neighbour as usize] as usize) < level {
                return Err(corrupt(format!(
                    "a layer-{level} neighbour list names slot {neighbour}, which is not on \
                     that layer"
                )));
            }
        }
        Ok(())
    };
    for block in layer0.chunks_exact(layer0_stride) {
        check_block(block, 0, 2 * m)?;
    }
    for (slot, &level) in levels.iter().enumerate() {
        for layer in 1..=level as usize {
            let start = upper_offsets[slot] + (layer - 1) * upper_stride;
            check_block(&upper[start..start + upper_stride], layer, m)?;
        }
    }
    let entry_point = if slots == 0 {
        if entry_point != NO_ENTRY_POINT || max_level != 0 {
            return Err(corrupt("an empty graph has an entry point".into()));
        }
        None
    } else {
        let entry_level = levels.get(entry_point as usize).copied();
        if entry_level.map(usize::from) != Some(max_level)
            || levels.iter().any(|&level| level as usize > max_level)
        {
            return Err(corrupt(format!(
                "entry point {entry_point} is not a slot on the top layer {max_level}"
            )));
        }
        Some(entry_point)
    };

    let mut slot_of_id = HashMap::with_capacity(slots);
    let mut tombstones = 0;
    for (slot, (&id, &deleted)) in ids.iter().zip(&deleted).enumerate() {
        if deleted {
            tombstones += 1;
        } else if slot_of_id.insert(id, slot as u32).is_some() {
            return Err(corrupt(format!("id {id} is live in two slots")));
        }
    }
    if slots > 0 && slot_of_id.is_empty() {
        return Err(corrupt("the graph holds only removed vectors".into()));
    }
    Ok(HnswIndex {
        dim,
        metric,
        params,
        vectors,
        ids,
        slot_of_id,
        deleted,
        tombstones,
        levels,
        layer0,
        upper_offsets,
        upper,
        entry_point,
        max_level,
        insertions,
        scratch_pool: Mutex::new(Vec::new()),
    })
}
