//! FAISS indexes behind [`VectorIndex`], built from an `index_factory` string.
//!
//! FAISS stores vectors under sequential labels (its position in the index), which here are
//! *slots*. Quiver's u64 ids map to slots through `slot_of_id`; an upsert of an existing id
//! or a remove marks the old slot dead (a tombstone) instead of asking FAISS to remove it,
//! because several FAISS index kinds (HNSW among them) cannot remove. Searches skip dead
//! slots with an `IDSelectorBitmap` passed in the search parameters, falling back to
//! fetching `k + dead` candidates for index kinds that refuse parameters. Once dead slots
//! outnumber an eighth of the live ones the index is rebuilt from the live vectors.
//!
//! The raw vectors are kept beside the FAISS index (one contiguous arena, by slot). They
//! answer [`VectorIndex::vector`] exactly whatever the FAISS codes lose, feed rebuilds and
//! training, re-score the candidates FAISS returns so every score is the exact metric
//! score (results merge exactly across shards whatever the factory), and answer searches
//! exactly while the index is untrained: an IVF or PQ factory trains once it holds enough
//! points (39 per centroid, FAISS's own guideline), retrying with twice as many if FAISS
//! still refuses.
//!
//! Concurrency: FAISS's CPU `search` is a `const` method that is safe to call from many
//! threads at once, so searches share a read lock. A query that overrides `efSearch` or
//! `nprobe` takes the write lock, because FAISS sets those on the index itself (the C API
//! has no per-query HNSW parameters); IVF `nprobe` overrides go through per-query
//! `SearchParametersIVF` and stay shared.
//!
//! # Save format
//! Two files: `faiss-<generation>.index` is FAISS's own serialisation, and `faiss.bin`
//! (written with [`crate::persist`], magic `QVFAISS1`) holds the spec, the slot table, the
//! raw vectors, and the name, length and CRC of the FAISS file it belongs with.
//! `faiss.bin` is replaced last and atomically, so a crash leaves the previous pair
//! readable; older generations are deleted after the switch.
#![allow(unsafe_code)]

use std::{
    collections::HashMap,
    ffi::CStr,
    fs,
    path::Path,
    ptr,
    sync::{RwLock, RwLockReadGuard},
};

use faiss::{index::autotune::ParameterSpace, index::IndexImpl, Index, MetricType};
use faiss_sys::{
    faiss_IDSelectorBitmap_new, faiss_IDSelector_free, faiss_IndexIVF_cast, faiss_Index_search,
    faiss_Index_search_with_params, faiss_SearchParametersIVF_free,
    faiss_SearchParametersIVF_new_with, faiss_SearchParameters_free, faiss_SearchParameters_new,
    faiss_get_last_error, idx_t, FaissIDSelector, FaissSearchParameters,
};

use crate::{
    persist::{Reader, Writer},
    spec::FaissSpec,
    validate::{prepare_batch, prepare_query},
    AllowList, Error, IndexSpec, Metric, Neighbor, Result, SearchParams, TopK, VectorIndex,
};

const META_FILE: &str = "faiss.bin";
const MAGIC: [u8; 8] = *b"QVFAISS1";
const FORMAT_VERSION: u32 = 1;
/// FAISS warns below 39 training points per centroid; training earlier gives poor cells.
const POINTS_PER_CENTROID: usize = 39;
const DEAD_SLOT: u64 = u64::MAX;

/// A FAISS index with Quiver's id mapping, tombstones and exact re-scoring.
pub struct FaissIndex {
    dim: usize,
    metric: Metric,
    spec: FaissSpec,
    inner: RwLock<Inner>,
    /// External id per slot; [`DEAD_SLOT`] for tombstones.
    slot_ids: Vec<u64>,
    /// Raw vectors by slot (normalised for cosine).
    vectors: Vec<f32>,
    slot_of_id: HashMap<u64, usize>,
    dead: usize,
    /// Live points at which the next training attempt happens.
    train_at: usize,
    /// Bit per slot, set when live; read by FAISS through `filter`.
    live_bitmap: Vec<u8>,
    filter: Option<Selector>,
    /// Parameter values applied from the spec, restored after per-query overrides.
    ef_search: Option<f64>,
    nprobe: Option<f64>,
}

struct Inner {
    index: IndexImpl,
    /// Whether FAISS holds every slot (false while waiting to be trained).
    populated: bool,
}

/// An owned `IDSelectorBitmap`. FAISS reads the bitmap through a pointer, so the bitmap
/// lives in [`FaissIndex::live_bitmap`] and is never reallocated while this exists.
struct Selector(*mut FaissIDSelector);

// SAFETY: the selector is immutable once built and FAISS only reads it.
unsafe impl Send for Selector {}
unsafe impl Sync for Selector {}

impl Drop for Selector {
    fn drop(&mut self) {
        // SAFETY: created by `faiss_IDSelectorBitmap_new`, freed once.
        unsafe { faiss_IDSelector_free(self.0) }
    }
}

impl FaissIndex {
    /// Builds an empty index; an unknown factory string or parameter is
    /// [`Error::InvalidSpec`].
    pub fn new(dim: usize, metric: Metric, spec: FaissSpec) -> Result<Self> {
        if spec
            .factory
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("idmap")
        {
            return Err(Error::InvalidSpec(
                "drop the IDMap prefix: Quiver maps ids to FAISS labels itself".into(),
            ));
        }
        let index = new_faiss_index(dim, metric, &spec)?;
        let (ef_search, nprobe) = apply_params(&index, &spec.params)?;
        let populated = index.is_trained();
        Ok(Self {
            dim,
            metric,
            train_at: minimum_training_points(&spec.factory),
            spec,
            inner: RwLock::new(Inner { index, populated }),
            slot_ids: Vec::new(),
            vectors: Vec::new(),
            slot_of_id: HashMap::new(),
            dead: 0,
            live_bitmap: Vec::new(),
            filter: None,
            ef_search,
            nprobe,
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn inner_mut(&mut self) -> &mut Inner {
        self.inner
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn slot_vector(&self, slot: usize) -> &[f32] {
        &self.vectors[slot * self.dim..(slot + 1) * self.dim]
    }

    fn live_vectors(&self) -> (Vec<u64>, Vec<f32>) {
        let mut ids = Vec::with_capacity(self.slot_of_id.len());
        let mut vectors = Vec::with_capacity(self.slot_of_id.len() * self.dim);
        for (slot, &id) in self.slot_ids.iter().enumerate() {
            if id != DEAD_SLOT {
                ids.push(id);
                vectors.extend_from_slice(self.slot_vector(slot));
            }
        }
        (ids, vectors)
    }

    /// Rebuilds the FAISS index from the live vectors only: drops tombstones and, for
    /// trainable factories, trains once enough points exist.
    fn rebuild(&mut self) -> Result<()> {
        let (ids, vectors) = self.live_vectors();
        let mut index = new_faiss_index(self.dim, self.metric, &self.spec)?;
        apply_params(&index, &self.spec.params)?;
        let mut populated = index.is_trained();
        if !populated && ids.len() >= self.train_at {
            match index.train(&vectors) {
                Ok(()) => populated = true,
                // FAISS refuses too few points for some factories (e.g. PQ with many bits);
                // stay exact and try again with twice as many.
                Err(_) => self.train_at = ids.len().saturating_mul(2),
            }
        }
        if populated && !vectors.is_empty() {
            index.add(&vectors).map_err(faiss_error)?;
        }
        self.slot_ids = ids;
        self.vectors = vectors;
        self.slot_of_id = self
            .slot_ids
            .iter()
            .enumerate()
            .map(|(slot, &id)| (id, slot))
            .collect();
        self.dead = 0;
        *self.inner_mut() = Inner { index, populated };
        self.refresh_filter()
    }

    fn refresh_filter(&mut self) -> Result<()> {
        self.filter = None;
        if self.dead == 0 {
            self.live_bitmap = Vec::new();
            return Ok(());
        }
        let mut bitmap = vec![0u8; self.slot_ids.len().div_ceil(8)];
        for (slot, &id) in self.slot_ids.iter().enumerate() {
            if id != DEAD_SLOT {
                bitmap[slot / 8] |= 1 << (slot % 8);
            }
        }
        self.live_bitmap = bitmap;
        let mut selector = ptr::null_mut();
        // SAFETY: the bitmap outlives the selector (both replaced together, selector first).
        check(unsafe {
            faiss_IDSelectorBitmap_new(
                &mut selector,
                self.live_bitmap.len(),
                self.live_bitmap.as_ptr(),
            )
        })?;
        self.filter = Some(Selector(selector.cast()));
        Ok(())
    }

    fn prepare(&self, query: &[f32]) -> Result<Vec<f32>> {
        let mut prepared = Vec::with_capacity(self.dim);
        prepare_query(self.dim, self.metric, query, &mut prepared)?;
        Ok(prepared)
    }

    fn exact_search(&self, query: &[f32], k: usize) -> Vec<Neighbor> {
        let mut top = TopK::new(self.metric, k);
        for (slot, &id) in self.slot_ids.iter().enumerate() {
            if id != DEAD_SLOT {
                top.push(Neighbor {
                    id,
                    score: self.metric.score(query, self.slot_vector(slot)),
                });
            }
        }
        top.into_sorted_vec()
    }

    /// Maps FAISS labels back to ids and re-scores them exactly.
    fn rescore(&self, query: &[f32], labels: &[idx_t], k: usize) -> Vec<Neighbor> {
        let mut top = TopK::new(self.metric, k);
        for &label in labels {
            let Ok(slot) = usize::try_from(label) else {
                continue; // -1: FAISS found fewer than asked
            };
            match self.slot_ids.get(slot) {
                Some(&id) if id != DEAD_SLOT => top.push(Neighbor {
                    id,
                    score: self.metric.score(query, self.slot_vector(slot)),
                }),
                _ => {}
            }
        }
        top.into_sorted_vec()
    }

    /// FAISS's labels for `query` under the per-query `params` (see
    /// [`FaissIndex::faiss_search`] for `only`). An `efSearch` override is set on the index
    /// itself, so it is applied, searched with and restored under the write lock, so no
    /// other search sees it.
    fn labels(
        &self,
        inner: RwLockReadGuard<'_, Inner>,
        query: &[f32],
        k: usize,
        params: &SearchParams,
        only: Option<&Selector>,
    ) -> Result<Vec<idx_t>> {
        let ef_override = (params.ef_search > 0)
            .then_some(f64::from(params.ef_search))
            .filter(|&ef| Some(ef) != self.ef_search);
        let nprobe_override = (params.nprobe > 0).then_some(params.nprobe as usize);
        let Some(ef) = ef_override else {
            return self.faiss_search(&inner, query, k, nprobe_override, only);
        };
        drop(inner);
        let guard = self
            .inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let space = ParameterSpace::new().map_err(faiss_error)?;
        let applied = space
            .set_index_parameter(&guard.index, "efSearch", ef)
            .is_ok();
        let result = self.faiss_search(&guard, query, k, nprobe_override, only);
        if applied {
            let restore = self.ef_search.unwrap_or(DEFAULT_EF_SEARCH);
            space
                .set_index_parameter(&guard.index, "efSearch", restore)
                .map_err(faiss_error)?;
        }
        result
    }

    /// FAISS's labels for `query`. With `only`, a selector of the slots a filter allows
    /// (live ones only), FAISS skips every other slot, and an index kind that refuses
    /// search parameters is an error; without it, tombstones are skipped through
    /// [`FaissIndex::filter`], or over-fetched where parameters are refused.
    fn faiss_search(
        &self,
        inner: &Inner,
        query: &[f32],
        k: usize,
        nprobe_override: Option<usize>,
        only: Option<&Selector>,
    ) -> Result<Vec<idx_t>> {
        let index = inner.index.inner_ptr();
        // SAFETY: `index` is a valid CPU index owned by `inner`; the cast only inspects it.
        let is_ivf = unsafe { !faiss_IndexIVF_cast(index).is_null() };
        if let Some(only) = only {
            let nprobe = nprobe_override.or(self.nprobe.map(|value| value as usize));
            return search_filtered(index, query, k, only, is_ivf, nprobe);
        }
        if let Some(filter) = &self.filter {
            let nprobe = nprobe_override.or(self.nprobe.map(|value| value as usize));
            match search_filtered(index, query, k, filter, is_ivf, nprobe) {
                Ok(labels) => return Ok(labels),
                Err(_) => {
                    // This index kind refuses search parameters: fetch enough to cover
                    // every tombstone instead.
                    let wanted = (k + self.dead).min(self.slot_ids.len());
                    return search_plain(index, query, wanted);
                }
            }
        }
        if let (Some(nprobe), true) = (nprobe_override, is_ivf) {
            let mut params = ptr::null_mut();
            // SAFETY: a null selector means "no filter"; freed below.
            check(unsafe {
                faiss_SearchParametersIVF_new_with(&mut params, ptr::null_mut(), nprobe, 0)
            })?;
            let result = search_with(index, query, k, params.cast());
            // SAFETY: created above, freed once.
            unsafe { faiss_SearchParametersIVF_free(params) };
            return result;
        }
        search_plain(index, query, k)
    }
}

impl VectorIndex for FaissIndex {
    fn spec(&self) -> IndexSpec {
        IndexSpec::Faiss(self.spec.clone())
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn metric(&self) -> Metric {
        self.metric
    }

    fn len(&self) -> usize {
        self.slot_of_id.len()
    }

    fn upsert(&mut self, ids: &[u64], vectors: &[f32]) -> Result<()> {
        let batch = prepare_batch(self.dim, self.metric, ids, vectors)?;
        if ids.contains(&DEAD_SLOT) {
            return Err(Error::InvalidArgument(format!(
                "id {DEAD_SLOT} is reserved by the FAISS index"
            )));
        }
        // A repeated id keeps its last occurrence: earlier ones are dropped here, so each
        // id takes one new slot.
        let mut last_row: HashMap<u64, usize> = HashMap::with_capacity(ids.len());
        for (row, &id) in ids.iter().enumerate() {
            last_row.insert(id, row);
        }
        let first_new_slot = self.slot_ids.len();
        for (row, &id) in ids.iter().enumerate() {
            if last_row[&id] != row {
                continue;
            }
            if let Some(old_slot) = self.slot_of_id.insert(id, self.slot_ids.len()) {
                self.slot_ids[old_slot] = DEAD_SLOT;
                self.dead += 1;
            }
            self.slot_ids.push(id);
            self.vectors
                .extend_from_slice(&batch[row * self.dim..(row + 1) * self.dim]);
        }

        let populated = self.read().populated;
        if populated {
            let added = self.vectors[first_new_slot * self.dim..].to_vec();
            let inner = self.inner_mut();
            if let Err(error) = inner.index.add(&added) {
                // FAISS holds part of the batch at most; rebuild so slots and labels agree.
                let error = faiss_error(error);
                self.rebuild()?;
                return Err(error);
            }
        } else if self.slot_of_id.len() >= self.train_at {
            return self.rebuild();
        }
        if self.dead > 0 && self.dead > (self.slot_of_id.len() / 8).max(64) {
            return self.rebuild();
        }
        self.refresh_filter()
    }

    fn remove(&mut self, ids: &[u64]) -> Result<usize> {
        let mut removed = 0;
        for id in ids {
            if let Some(slot) = self.slot_of_id.remove(id) {
                self.slot_ids[slot] = DEAD_SLOT;
                self.dead += 1;
                removed += 1;
            }
        }
        if removed == 0 {
            return Ok(0);
        }
        if self.dead > (self.slot_of_id.len() / 8).max(64) {
            self.rebuild()?;
        } else {
            self.refresh_filter()?;
        }
        Ok(removed)
    }

    fn vector(&self, id: u64) -> Option<Vec<f32>> {
        self.slot_of_id
            .get(&id)
            .map(|&slot| self.slot_vector(slot).to_vec())
    }

    fn search(&self, query: &[f32], k: usize, params: &SearchParams) -> Result<Vec<Neighbor>> {
        let query = self.prepare(query)?;
        let k = k.min(self.slot_of_id.len());
        if k == 0 {
            return Ok(Vec::new());
        }
        let inner = self.read();
        if !inner.populated {
            return Ok(self.exact_search(&query, k));
        }
        let labels = self.labels(inner, &query, k, params, None)?;
        Ok(self.rescore(&query, &labels, k))
    }

    fn search_among(&self, query: &[f32], k: usize, allowed: &AllowList) -> Result<Vec<Neighbor>> {
        let query = self.prepare(query)?;
        if k == 0 || allowed.is_empty() || self.slot_of_id.is_empty() {
            return Ok(Vec::new());
        }
        let mut top = TopK::new(self.metric, k.min(allowed.len() as usize));
        for id in allowed.ids() {
            if let Some(&slot) = self.slot_of_id.get(&id) {
                top.push(Neighbor {
                    id,
                    score: self.metric.score(&query, self.slot_vector(slot)),
                });
            }
        }
        Ok(top.into_sorted_vec())
    }

    /// FAISS's own search with an `IDSelectorBitmap` of the allowed live slots in its
    /// search parameters, re-scored exactly. Index kinds that refuse parameters over-fetch
    /// by the filter's selectivity and drop what it excludes.
    fn search_filtered(
        &self,
        query: &[f32],
        k: usize,
        params: &SearchParams,
        allowed: &AllowList,
    ) -> Result<Vec<Neighbor>> {
        let prepared = self.prepare(query)?;
        let k = k.min(self.slot_of_id.len()).min(allowed.len() as usize);
        if k == 0 {
            return Ok(Vec::new());
        }
        let inner = self.read();
        if !inner.populated {
            drop(inner);
            return self.search_among(query, k, allowed);
        }
        let mut bitmap = vec![0u8; self.slot_ids.len().div_ceil(8)];
        for id in allowed.ids() {
            if let Some(&slot) = self.slot_of_id.get(&id) {
                bitmap[slot / 8] |= 1 << (slot % 8);
            }
        }
        let mut selector = ptr::null_mut();
        // SAFETY: `bitmap` outlives the selector, which is dropped at the end of this call.
        check(unsafe { faiss_IDSelectorBitmap_new(&mut selector, bitmap.len(), bitmap.as_ptr()) })?;
        let only = Selector(selector.cast());
        match self.labels(inner, &prepared, k, params, Some(&only)) {
            Ok(labels) => Ok(self.rescore(&prepared, &labels, k)),
            Err(_) => {
                // This kind refuses search parameters: over-fetch instead.
                let stored = self.slot_of_id.len() as u64;
                let wanted = (k as u64)
                    .saturating_mul(stored)
                    .div_ceil(allowed.len().max(1))
                    .saturating_mul(2)
                    .min(stored) as usize;
                let labels = self.labels(self.read(), &prepared, wanted.max(k), params, None)?;
                let mut found = self.rescore(&prepared, &labels, wanted.max(k));
                found.retain(|neighbor| allowed.contains(neighbor.id));
                found.truncate(k);
                Ok(found)
            }
        }
    }

    fn save(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir)?;
        let previous = read_generation(dir).unwrap_or(0);
        let generation = previous + 1;
        let index_name = format!("faiss-{generation}.index");
        let index_path = dir.join(&index_name);
        {
            let inner = self.read();
            faiss::write_index(&inner.index, index_path.to_string_lossy().as_ref())
                .map_err(faiss_error)?;
        }
        let index_bytes = fs::read(&index_path)?;
        fs::File::open(&index_path)?.sync_all()?;
        let index_crc = crc32fast::hash(&index_bytes);

        let populated = self.read().populated;
        let mut writer = Writer::create(dir, META_FILE, &MAGIC, FORMAT_VERSION)?;
        writer.len(self.dim)?;
        writer.metric(self.metric)?;
        writer.len(self.spec.factory.len())?;
        writer.bytes(self.spec.factory.as_bytes())?;
        writer.len(self.spec.params.len())?;
        writer.bytes(self.spec.params.as_bytes())?;
        writer.u64(generation)?;
        writer.len(index_bytes.len())?;
        writer.u32(index_crc)?;
        writer.u8(u8::from(populated))?;
        writer.len(self.train_at)?;
        writer.len(self.slot_ids.len())?;
        writer.u64s(&self.slot_ids)?;
        writer.f32s(&self.vectors)?;
        writer.commit()?;

        // The new pair is current; older FAISS files are garbage now.
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("faiss-") && name.ends_with(".index") && name != index_name {
                let _ = fs::remove_file(dir.join(name.as_ref()));
            }
        }
        Ok(())
    }

    fn memory_bytes(&self) -> usize {
        // FAISS does not report its own footprint through the C API; count what it must
        // hold at least (a float per dimension per vector for Flat-based indexes is an
        // upper bound we cannot know), so only Quiver's side is counted exactly.
        self.slot_ids.capacity() * size_of::<u64>()
            + self.vectors.capacity() * size_of::<f32>()
            + self.slot_of_id.capacity() * (size_of::<u64>() + size_of::<usize>() + 1)
            + self.live_bitmap.capacity()
    }
}

/// FAISS's default `efSearch`, restored after an override when the spec set none.
const DEFAULT_EF_SEARCH: f64 = 16.0;

impl FaissIndex {
    /// Applies `name=value,...` search parameters (`efSearch`, `nprobe`, ...) to the index
    /// itself, so later searches use them without per-query overrides. Used to sweep a
    /// parameter on one built index; a rebuild (after many deletes) returns to the spec's.
    pub fn set_search_params(&mut self, params: &str) -> Result<()> {
        let (ef_search, nprobe) = apply_params(&self.inner_mut().index, params)?;
        self.ef_search = ef_search.or(self.ef_search);
        self.nprobe = nprobe.or(self.nprobe);
        Ok(())
    }
}

impl FaissIndex {
    /// Reopens an index written by [`VectorIndex::save`].
    pub fn load(dir: &Path) -> Result<Self> {
        let mut reader = Reader::open(dir, META_FILE, &MAGIC, FORMAT_VERSION)?;
        let dim = reader.len()?;
        let metric = reader.metric()?;
        let factory_len = reader.len()?;
        let factory = String::from_utf8(reader.bytes(factory_len)?)
            .map_err(|_| reader.corrupt("factory string is not UTF-8"))?;
        let params_len = reader.len()?;
        let params = String::from_utf8(reader.bytes(params_len)?)
            .map_err(|_| reader.corrupt("params string is not UTF-8"))?;
        let generation = reader.u64()?;
        let index_len = reader.len()?;
        let index_crc = reader.u32()?;
        let populated = reader.u8()? != 0;
        let train_at = reader.len()?;
        let slots = reader.len()?;
        let slot_ids = reader.u64s(slots)?;
        let value_count = slots
            .checked_mul(dim)
            .ok_or_else(|| reader.corrupt("vector data overflows"))?;
        let vectors = reader.f32s(value_count)?;
        let corrupt = |detail: String| Error::Corrupt(format!("{}: {detail}", dir.display()));
        reader.finish()?;

        let index_path = dir.join(format!("faiss-{generation}.index"));
        let index_bytes = fs::read(&index_path)?;
        if index_bytes.len() != index_len || crc32fast::hash(&index_bytes) != index_crc {
            return Err(corrupt(format!(
                "{} does not match the checksum recorded for it",
                index_path.display()
            )));
        }
        let index = faiss::read_index(index_path.to_string_lossy().as_ref())
            .map_err(|error| corrupt(format!("FAISS could not read its index: {error}")))?;
        if index.d() as usize != dim {
            return Err(corrupt(
                "FAISS index dimension differs from the metadata".into(),
            ));
        }

        let spec = FaissSpec { factory, params };
        let (ef_search, nprobe) = apply_params(&index, &spec.params)?;
        let mut slot_of_id = HashMap::with_capacity(slots);
        let mut dead = 0;
        for (slot, &id) in slot_ids.iter().enumerate() {
            if id == DEAD_SLOT {
                dead += 1;
            } else if slot_of_id.insert(id, slot).is_some() {
                return Err(corrupt(format!("id {id} is stored twice")));
            }
        }
        if populated && index.ntotal() as usize != slots {
            return Err(corrupt(format!(
                "FAISS holds {} vectors but the slot table has {slots}",
                index.ntotal()
            )));
        }
        let mut loaded = Self {
            dim,
            metric,
            spec,
            inner: RwLock::new(Inner { index, populated }),
            slot_ids,
            vectors,
            slot_of_id,
            dead,
            train_at,
            live_bitmap: Vec::new(),
            filter: None,
            ef_search,
            nprobe,
        };
        loaded.refresh_filter()?;
        Ok(loaded)
    }
}

fn read_generation(dir: &Path) -> Option<u64> {
    let mut reader = Reader::open(dir, META_FILE, &MAGIC, FORMAT_VERSION).ok()?;
    reader.len().ok()?;
    reader.metric().ok()?;
    let factory_len = reader.len().ok()?;
    reader.bytes(factory_len).ok()?;
    let params_len = reader.len().ok()?;
    reader.bytes(params_len).ok()?;
    reader.u64().ok()
}

fn new_faiss_index(dim: usize, metric: Metric, spec: &FaissSpec) -> Result<IndexImpl> {
    let dim = u32::try_from(dim)
        .map_err(|_| Error::InvalidSpec(format!("dimension {dim} is too large for FAISS")))?;
    let metric_type = match metric {
        Metric::L2 => MetricType::L2,
        // Cosine vectors are normalised before they reach FAISS.
        Metric::InnerProduct | Metric::Cosine => MetricType::InnerProduct,
    };
    faiss::index_factory(dim, spec.factory.as_str(), metric_type).map_err(|error| {
        Error::InvalidSpec(format!(
            "FAISS index_factory refused {:?} for dimension {dim}: {error}",
            spec.factory
        ))
    })
}

/// Applies `name=value,...` through FAISS's `ParameterSpace`; returns the efSearch and
/// nprobe values set, which per-query overrides restore afterwards.
fn apply_params(index: &IndexImpl, params: &str) -> Result<(Option<f64>, Option<f64>)> {
    let mut ef_search = None;
    let mut nprobe = None;
    if params.trim().is_empty() {
        return Ok((ef_search, nprobe));
    }
    let space = ParameterSpace::new().map_err(faiss_error)?;
    for pair in params.split(',').filter(|pair| !pair.trim().is_empty()) {
        let (name, value) = pair.split_once('=').ok_or_else(|| {
            Error::InvalidSpec(format!("faiss params: expected name=value, got {pair:?}"))
        })?;
        let value: f64 = value.trim().parse().map_err(|_| {
            Error::InvalidSpec(format!(
                "faiss params: {name} needs a number, got {value:?}"
            ))
        })?;
        space
            .set_index_parameter(index, name.trim(), value)
            .map_err(|error| {
                Error::InvalidSpec(format!("faiss params: FAISS refused {pair:?}: {error}"))
            })?;
        match name.trim() {
            "efSearch" => ef_search = Some(value),
            "nprobe" => nprobe = Some(value),
            _ => {}
        }
    }
    Ok((ef_search, nprobe))
}

/// Points needed before training is worth trying: 39 per coarse centroid (`IVF<n>`) and
/// per PQ centroid (`PQ<m>x<bits>`, 8 bits unless given), FAISS's own guideline.
fn minimum_training_points(factory: &str) -> usize {
    let mut needed = 1;
    for component in factory.split(',') {
        let component = component.trim();
        if let Some(rest) = component.strip_prefix("IVF") {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(nlist) = digits.parse::<usize>() {
                needed = needed.max(nlist.saturating_mul(POINTS_PER_CENTROID));
            }
        }
        if let Some(rest) = component.strip_prefix("PQ") {
            let bits = rest
                .split_once('x')
                .and_then(|(_, bits)| {
                    bits.chars()
                        .take_while(char::is_ascii_digit)
                        .collect::<String>()
                        .parse::<u32>()
                        .ok()
                })
                .unwrap_or(8)
                .min(16);
            needed = needed.max((1usize << bits).saturating_mul(POINTS_PER_CENTROID));
        }
    }
    needed
}

fn search_plain(index: *mut faiss_sys::FaissIndex, query: &[f32], k: usize) -> Result<Vec<idx_t>> {
    let mut distances = vec![0f32; k];
    let mut labels: Vec<idx_t> = vec![-1; k];
    // SAFETY: FAISS CPU search is const and thread-safe; buffers hold k results for the
    // single query passed.
    check(unsafe {
        faiss_Index_search(
            index,
            1,
            query.as_ptr(),
            k as idx_t,
            distances.as_mut_ptr(),
            labels.as_mut_ptr(),
        )
    })?;
    Ok(labels)
}

fn search_with(
    index: *mut faiss_sys::FaissIndex,
    query: &[f32],
    k: usize,
    params: *const FaissSearchParameters,
) -> Result<Vec<idx_t>> {
    let mut distances = vec![0f32; k];
    let mut labels: Vec<idx_t> = vec![-1; k];
    // SAFETY: as in `search_plain`; `params` is valid for the duration of the call.
    check(unsafe {
        faiss_Index_search_with_params(
            index,
            1,
            query.as_ptr(),
            k as idx_t,
            params,
            distances.as_mut_ptr(),
            labels.as_mut_ptr(),
        )
    })?;
    Ok(labels)
}

fn search_filtered(
    index: *mut faiss_sys::FaissIndex,
    query: &[f32],
    k: usize,
    filter: &Selector,
    is_ivf: bool,
    nprobe: Option<usize>,
) -> Result<Vec<idx_t>> {
    if is_ivf {
        let mut params = ptr::null_mut();
        // SAFETY: the selector outlives the parameters, which are freed below.
        check(unsafe {
            faiss_SearchParametersIVF_new_with(&mut params, filter.0, nprobe.unwrap_or(1), 0)
        })?;
        let result = search_with(index, query, k, params.cast());
        // SAFETY: created above, freed once (the selector is not owned by it).
        unsafe { faiss_SearchParametersIVF_free(params) };
        result
    } else {
        let mut params = ptr::null_mut();
        // SAFETY: as above.
        check(unsafe { faiss_SearchParameters_new(&mut params, filter.0) })?;
        let result = search_with(index, query, k, params);
        // SAFETY: as above.
        unsafe { faiss_SearchParameters_free(params) };
        result
    }
}

fn check(code: std::os::raw::c_int) -> Result<()> {
    if code == 0 {
        return Ok(());
    }
    // SAFETY: FAISS keeps the last error message in thread-local storage until the next
    // failing call on this thread; it is copied out at once.
    let message = unsafe {
        let message = faiss_get_last_error();
        if message.is_null() {
            format!("FAISS call failed with code {code}")
        } else {
            CStr::from_ptr(message).to_string_lossy().into_owned()
        }
    };
    Err(Error::Backend(message))
}

fn faiss_error(error: faiss::error::Error) -> Error {
    Error::Backend(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_threshold_follows_the_factory() {
        assert_eq!(minimum_training_points("HNSW32"), 1);
        assert_eq!(minimum_training_points("IVF256,Flat"), 256 * 39);
        assert_eq!(minimum_training_points("IVF16,PQ8"), 256 * 39);
        assert_eq!(minimum_training_points("IVF1024,PQ8x4"), 1024 * 39);
        assert_eq!(minimum_training_points("PQ8x10"), 1024 * 39);
    }

    #[test]
    fn unknown_factories_and_idmap_are_refused() {
        for factory in ["NotAnIndex", "PQ3", "IDMap,Flat"] {
            let spec = FaissSpec {
                factory: factory.into(),
                params: String::new(),
            };
            let Err(error) = FaissIndex::new(8, Metric::L2, spec) else {
                panic!("{factory} was accepted");
            };
            assert!(matches!(error, Error::InvalidSpec(_)), "{factory}: {error}");
        }
        let spec = FaissSpec {
            factory: "HNSW8".into(),
            params: "noSuchParameter=3".into(),
        };
        assert!(matches!(
            FaissIndex::new(8, Metric::L2, spec),
            Err(Error::InvalidSpec(_))
        ));
    }
}
