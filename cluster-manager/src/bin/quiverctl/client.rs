//! Connecting to the Merger (gRPC) and reading the cluster state from etcd, with failures
//! turned into the friendly errors of [`crate::errors`].

use std::time::Duration;

use quiver_cluster::{
    model::decode, ClusterState, EtcdStore, KeySchema, LeaderRecord, MetadataStore, RebalanceRecord,
};
use quiver_proto::v1::{
    merger_client::MergerClient, CollectionConfig, DescribeCollectionRequest, Metric,
};
use tonic::transport::Channel;

use crate::{
    errors::{status_for, CliError},
    GlobalOptions,
};

pub type Merger = MergerClient<Channel>;

/// A client of the Merger at `--merger`, connected now so that an unreachable Merger is
/// reported as such, not as the first call's failure.
pub async fn merger(global: &GlobalOptions) -> Result<Merger, CliError> {
    let address = global.merger.trim();
    let address = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    let endpoint = Channel::from_shared(address.clone()).map_err(|error| {
        CliError::usage(format!(
            "--merger {address:?} is not a valid address: {error}"
        ))
        .hint("give it as http://host:port")
    })?;
    let channel = endpoint
        .connect_timeout(global.timeout.min(Duration::from_secs(10)))
        .timeout(global.timeout)
        .connect()
        .await
        .map_err(|error| CliError::merger_unreachable(&address, &transport_cause(&error)))?;
    Ok(MergerClient::new(channel)
        .max_decoding_message_size(quiver_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(quiver_proto::MAX_MESSAGE_BYTES))
}

/// The innermost cause of a transport error ("Connection refused (os error 111)"), which
/// says more than tonic's "transport error".
fn transport_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &dyn std::error::Error = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// Why etcd could not be read, in a few words: the innermost cause of a failed call
/// ("Connection refused (os error 111)") or the status message, not a debug dump.
fn etcd_cause(error: &quiver_cluster::Error) -> String {
    match error {
        quiver_cluster::Error::Etcd(etcd_client::Error::GRpcStatus(status)) => {
            match std::error::Error::source(status) {
                Some(source) => transport_cause(source),
                None => status.message().to_string(),
            }
        }
        quiver_cluster::Error::Etcd(etcd) => transport_cause(etcd),
        other => other.to_string(),
    }
}

/// A collection's configuration, for commands that need its dimension or metric.
pub async fn collection_config(
    merger: &mut Merger,
    name: &str,
) -> Result<CollectionConfig, CliError> {
    let description = merger
        .describe_collection(DescribeCollectionRequest {
            name: name.to_string(),
        })
        .await
        .map_err(status_for(name))?
        .into_inner();
    description
        .collection
        .and_then(|collection| collection.config)
        .ok_or_else(|| {
            CliError::new(
                "INTERNAL",
                format!("the Merger described collection '{name}' without its configuration"),
            )
        })
}

/// The collection's metric, defaulting to L2 for an unknown value.
pub fn metric_of(config: &CollectionConfig) -> Metric {
    Metric::try_from(config.metric).unwrap_or(Metric::L2)
}

/// What `status` and `rebalance` show: one consistent read of everything under the prefix.
pub struct Snapshot {
    pub state: ClusterState,
    pub leader: Option<LeaderRecord>,
    pub rebalance: Option<RebalanceRecord>,
}

pub async fn read_snapshot(global: &GlobalOptions) -> Result<Snapshot, CliError> {
    let endpoints = global.etcd_endpoints.join(",");
    let unreachable = |error: quiver_cluster::Error| match error {
        quiver_cluster::Error::MalformedValue { .. } => {
            CliError::new("INTERNAL", error.to_string())
        }
        other => CliError::etcd_unreachable(&endpoints, &etcd_cause(&other)),
    };
    let timeout = global.timeout.min(Duration::from_secs(10));
    let store = EtcdStore::connect(&global.etcd_endpoints, timeout)
        .await
        .map_err(unreachable)?;
    let schema = KeySchema::new(&global.etcd_prefix);
    let (listed, revision) = store
        .get_prefix(schema.prefix())
        .await
        .map_err(unreachable)?;
    let state = ClusterState::from_listing(&schema, &listed, revision);
    let find = |key: String| listed.iter().find(|stored| stored.key == key).cloned();
    let leader = find(schema.controller_leader())
        .map(|stored| decode::<LeaderRecord>(&stored.key, &stored.value))
        .transpose()
        .map_err(unreachable)?;
    let rebalance = find(schema.controller_rebalance())
        .map(|stored| decode::<RebalanceRecord>(&stored.key, &stored.value))
        .transpose()
        .map_err(unreachable)?;
    Ok(Snapshot {
        state,
        leader,
        rebalance,
    })
}
