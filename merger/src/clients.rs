//! One lazily connected gRPC channel per Searcher address, shared by all requests. A tonic
//! channel multiplexes calls over HTTP/2 and reconnects by itself, so one is enough.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use quiver_proto::v1::searcher_client::SearcherClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};

pub struct SearcherClients {
    channels: Mutex<HashMap<String, Channel>>,
    connect_timeout: Duration,
}

impl SearcherClients {
    pub fn new(connect_timeout: Duration) -> SearcherClients {
        SearcherClients {
            channels: Mutex::new(HashMap::new()),
            connect_timeout,
        }
    }

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
                        Error::Internal(format!("searcher address {address:?} is invalid: {error}"))
                    })?
                    .connect_timeout(self.connect_timeout)
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
