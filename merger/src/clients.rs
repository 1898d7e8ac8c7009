//! One lazily connected gRPC channel per Searcher address, shared by all requests. A tonic
//! channel multiplexes calls over HTTP/2 and reconnects by itself, so one is enough.
//!
//! Lookups take a read lock for a map lookup and a channel clone; nothing holds the lock
//! across an `.await`, so cluster-state updates ([`SearcherClients::retain`]) never wait
//! for a search, nor a search for them.

use std::{collections::HashMap, sync::RwLock, time::Duration};

use quiver_proto::v1::searcher_client::SearcherClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};

pub struct SearcherClients {
    channels: RwLock<HashMap<String, Channel>>,
    connect_timeout: Duration,
}

impl SearcherClients {
    pub fn new(connect_timeout: Duration) -> SearcherClients {
        SearcherClients {
            channels: RwLock::new(HashMap::new()),
            connect_timeout,
        }
    }

    pub fn client(&self, address: &str) -> Result<SearcherClient<Channel>> {
        let channel = self
            .channels
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(address)
            .cloned();
        let channel = match channel {
            Some(channel) => channel,
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
                // Two requests may race to create it; the first one stored is kept, so that
                // every caller shares one connection.
                self.channels
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .entry(address.to_string())
                    .or_insert(channel)
                    .clone()
            }
        };
        Ok(SearcherClient::new(channel)
            .max_decoding_message_size(quiver_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(quiver_proto::MAX_MESSAGE_BYTES))
    }

    /// Closes the channels of addresses no live Searcher has any more (calls in flight on
    /// them keep their own clone of the channel and finish normally).
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        self.channels
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .retain(|address, _| live(address));
    }

    /// How many channels are open, for tests.
    pub fn len(&self) -> usize {
        self.channels
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_channel_per_address_reused_and_pruned() {
        let clients = SearcherClients::new(Duration::from_secs(1));
        clients.client("http://127.0.0.1:1").unwrap();
        clients.client("http://127.0.0.1:1").unwrap();
        clients.client("http://127.0.0.1:2").unwrap();
        assert_eq!(clients.len(), 2);
        clients.retain(|address| address.ends_with(":2"));
        assert_eq!(clients.len(), 1);
        assert!(clients.client("not a uri").is_err());
    }
}
