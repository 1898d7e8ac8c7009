//! `quiverctl payload-index create|drop|list`: a collection's payload indexes. Filters work
//! on every key and give the same answers with or without an index; an index on a key makes
//! filters on it fast (they no longer read payloads).

use clap::Subcommand;
use quiver_payload::{proto::index_type_to_proto, PayloadIndexType};
use quiver_proto::v1::{CreatePayloadIndexRequest, DropPayloadIndexRequest, PayloadIndex};
use serde_json::json;

use crate::{
    client,
    errors::status_for,
    output::{Printer, Table},
    GlobalOptions,
};

#[derive(Debug, Subcommand)]
pub enum PayloadIndexCommand {
    /// Declare a payload index on a key (every replica builds it from the stored payloads).
    /// Declaring the same key with the same type again changes nothing.
    Create {
        collection: String,
        /// A dotted path into the payload object: "category", "meta.lang".
        key: String,
        /// keyword (strings, matched exactly), integer (whole numbers, matched and ranged),
        /// float (any numbers, ranged) or bool.
        #[arg(value_name = "TYPE", value_parser = parse_index_type)]
        kind: PayloadIndexType,
    },
    /// Drop the payload index on a key (filters on it keep working, reading payloads).
    Drop { collection: String, key: String },
    /// List a collection's payload indexes.
    #[command(visible_alias = "ls")]
    List { collection: String },
}

/// A payload index type as clap reads it: keyword, integer, float or bool, in any case.
pub fn parse_index_type(text: &str) -> Result<PayloadIndexType, String> {
    text.parse::<PayloadIndexType>().map_err(|_| {
        format!("{text:?} is not a payload index type: give keyword, integer, float or bool")
    })
}

/// `--payload-index KEY:TYPE` of `collections create`.
pub fn parse_index_spec(text: &str) -> Result<PayloadIndex, String> {
    let Some((key, kind)) = text.rsplit_once(':') else {
        return Err(format!(
            "{text:?} is not KEY:TYPE; give for example category:keyword or price:float"
        ));
    };
    if key.is_empty() {
        return Err(format!("{text:?} names no key before the ':'"));
    }
    Ok(PayloadIndex {
        key: key.to_string(),
        r#type: index_type_to_proto(parse_index_type(kind)?) as i32,
    })
}

/// "keyword", "integer", "float", "bool" (or "unknown").
pub fn type_name(kind: i32) -> &'static str {
    quiver_payload::proto::index_type_from_proto(kind).map_or("unknown", PayloadIndexType::as_str)
}

/// `[{"key", "type"}]`, as `--output json` lists them.
pub fn indexes_json(indexes: &[PayloadIndex]) -> serde_json::Value {
    indexes
        .iter()
        .map(|index| json!({ "key": index.key, "type": type_name(index.r#type) }))
        .collect()
}

/// "category (keyword), price (float)", or "none".
pub fn indexes_text(indexes: &[PayloadIndex]) -> String {
    if indexes.is_empty() {
        return "none".to_string();
    }
    indexes
        .iter()
        .map(|index| format!("{} ({})", index.key, type_name(index.r#type)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// "category:keyword,price:float" for a table cell ("" for none).
pub fn indexes_cell(indexes: &[PayloadIndex]) -> String {
    indexes
        .iter()
        .map(|index| format!("{}:{}", index.key, type_name(index.r#type)))
        .collect::<Vec<_>>()
        .join(",")
}

fn indexes_table(indexes: &[PayloadIndex]) -> String {
    if indexes.is_empty() {
        return "no payload indexes\n".to_string();
    }
    let mut table = Table::new(&[("key", false), ("type", false)]);
    for index in indexes {
        table.row(vec![index.key.clone(), type_name(index.r#type).to_string()]);
    }
    table.render()
}

pub async fn run(
    global: &GlobalOptions,
    printer: Printer,
    command: PayloadIndexCommand,
) -> anyhow::Result<()> {
    let mut merger = client::merger(global).await?;
    let (collection, heading, indexes) = match command {
        PayloadIndexCommand::Create {
            collection,
            key,
            kind,
        } => {
            let indexes = merger
                .create_payload_index(CreatePayloadIndexRequest {
                    collection: collection.clone(),
                    key: key.clone(),
                    r#type: index_type_to_proto(kind) as i32,
                })
                .await
                .map_err(status_for(&collection))?
                .into_inner()
                .payload_indexes;
            let heading = format!("created payload index on {key} ({kind}) in {collection}\n");
            (collection, heading, indexes)
        }
        PayloadIndexCommand::Drop { collection, key } => {
            let indexes = merger
                .drop_payload_index(DropPayloadIndexRequest {
                    collection: collection.clone(),
                    key: key.clone(),
                })
                .await
                .map_err(status_for(&collection))?
                .into_inner()
                .payload_indexes;
            let heading = format!("dropped payload index on {key} in {collection}\n");
            (collection, heading, indexes)
        }
        PayloadIndexCommand::List { collection } => {
            let config = client::collection_config(&mut merger, &collection).await?;
            (collection, String::new(), config.payload_indexes)
        }
    };
    printer.emit(&format!("{heading}{}", indexes_table(&indexes)), || {
        json!({
            "collection": collection,
            "payload_indexes": indexes_json(&indexes),
        })
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_read_key_and_type() {
        let spec = parse_index_spec("meta.lang:KEYWORD").unwrap();
        assert_eq!(spec.key, "meta.lang");
        assert_eq!(type_name(spec.r#type), "keyword");
        assert_eq!(
            type_name(parse_index_spec("a:b:float").unwrap().r#type),
            "float"
        );
        assert!(parse_index_spec("price").unwrap_err().contains("KEY:TYPE"));
        assert!(parse_index_spec(":bool").is_err());
        assert!(parse_index_spec("price:number")
            .unwrap_err()
            .contains("keyword, integer, float or bool"));
        let indexes = [spec, parse_index_spec("price:float").unwrap()];
        assert_eq!(indexes_text(&indexes), "meta.lang (keyword), price (float)");
        assert_eq!(indexes_cell(&indexes), "meta.lang:keyword,price:float");
        assert_eq!(
            indexes_json(&indexes),
            json!([{"key": "meta.lang", "type": "keyword"}, {"key": "price", "type": "float"}])
        );
        assert_eq!(indexes_text(&[]), "none");
    }
}
