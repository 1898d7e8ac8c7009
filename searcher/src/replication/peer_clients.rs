//! One lazily connected channel per peer Searcher.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use quiver_proto::v1::searcher_client::SearcherClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};

/// One lazily connected channel per peer Searcher.
#[derive(Default)]
pub struct PeerClients {
    channels: Mutex<HashMap<String, Channel>>,
}

impl PeerClients {
    pub fn client(&self, address: &str) -> Result<SearcherClient<Channel>> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let channel = match channels.get(address) {
            Some(channel) => channel.clone(),
            None => {
                let channel = Endpoint::from_shared(address.to_string())
                    .map_err(|error| {
                        Error::Internal(format!("peer address {address:?} is invalid: {error}"))
                    })?
                    .connect_timeout(Duration::from_secs(2))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(20))
                    .keep_alive_timeout(Duration::from_secs(10))
                    .connect_lazy();
                channels.insert(address.to_string(), channel.clone());
                channel
            }
        };
        Ok(SearcherClient::new(channel)
            .max_decoding_message_size(quiver_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(quiver_proto::MAX_MESSAGE_BYTES))
    }
}
