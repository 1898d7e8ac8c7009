//! A small min-cost flow solver for placement: successive shortest paths (SPFA, so edges
//! may cost less than zero) from a flow that is already there, augmenting while a path of
//! negative cost remains. That is the cheapest flow of any size; with mandatory edges
//! priced far below everything else it is the cheapest flow that saturates them.
//!
//! Starting from a flow (rather than from nothing) is what keeps placement cheap: when
//! the current placement is already within its bounds no path has a negative cost and the
//! solver does nothing, and after a join or a leave it routes only the units that must
//! move.

use std::collections::VecDeque;

#[derive(Debug, Clone)]
struct Edge {
    to: usize,
    /// Residual capacity.
    capacity: u32,
    cost: i128,
    /// Index of the reverse edge in `edges[to]`.
    reverse: usize,
}

#[derive(Debug, Clone)]
pub(super) struct FlowNetwork {
    edges: Vec<Vec<Edge>>,
}

/// Names one edge: its tail node and its index among the tail's edges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct EdgeId {
    from: usize,
    index: usize,
}

impl FlowNetwork {
    pub(super) fn new(nodes: usize) -> FlowNetwork {
        FlowNetwork {
            edges: vec![Vec::new(); nodes],
        }
    }

    /// An edge `from -> to` of `capacity` at `cost` per unit, carrying `flow` units already
    /// (`flow <= capacity`): its residual is `capacity - flow` forward and `flow` back.
    pub(super) fn add_edge(
        &mut self,
        from: usize,
        to: usize,
        capacity: u32,
        cost: i128,
        flow: u32,
    ) -> EdgeId {
        debug_assert!(flow <= capacity && from != to);
        let forward = self.edges[from].len();
        let reverse = self.edges[to].len();
        self.edges[from].push(Edge {
            to,
            capacity: capacity - flow,
            cost,
            reverse,
        });
        self.edges[to].push(Edge {
            to: from,
            capacity: flow,
            cost: -cost,
            reverse: forward,
        });
        EdgeId {
            from,
            index: forward,
        }
    }

    /// Units on an edge made by [`FlowNetwork::add_edge`]: what its reverse can give back.
    pub(super) fn flow(&self, edge: EdgeId) -> u32 {
        let forward = &self.edges[edge.from][edge.index];
        self.edges[forward.to][forward.reverse].capacity
    }

    /// Augments along cheapest `source -> sink` paths while they cost less than zero.
    /// The residual graph must have no negative cycle to begin with (true of a flow whose
    /// every cycle crosses positive-cost edges); successive shortest paths keep it so.
    pub(super) fn augment_while_negative(&mut self, source: usize, sink: usize) {
        let nodes = self.edges.len();
        loop {
            let mut distance = vec![i128::MAX; nodes];
            let mut via: Vec<Option<(usize, usize)>> = vec![None; nodes];
            let mut queued = vec![false; nodes];
            let mut queue = VecDeque::from([source]);
            distance[source] = 0;
            queued[source] = true;
            while let Some(node) = queue.pop_front() {
                queued[node] = false;
                for (index, edge) in self.edges[node].iter().enumerate() {
                    if edge.capacity == 0 {
                        continue;
                    }
                    let through = distance[node] + edge.cost;
                    if through < distance[edge.to] {
                        distance[edge.to] = through;
                        via[edge.to] = Some((node, index));
                        if !queued[edge.to] {
                            queued[edge.to] = true;
                            queue.push_back(edge.to);
                        }
                    }
                }
            }
            if distance[sink] >= 0 {
                return;
            }
            let mut bottleneck = u32::MAX;
            let mut node = sink;
            while let Some((from, index)) = via[node] {
                bottleneck = bottleneck.min(self.edges[from][index].capacity);
                node = from;
            }
            let mut node = sink;
            while let Some((from, index)) = via[node] {
                let reverse = self.edges[from][index].reverse;
                self.edges[from][index].capacity -= bottleneck;
                self.edges[node][reverse].capacity += bottleneck;
                node = from;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_mandatory_units_the_cheapest_way() {
        // source 0, sink 1; two mandatory units must cross 2 -> {3, 4} -> sink, 3 is cheaper
        // but takes only one unit.
        let mut network = FlowNetwork::new(5);
        let supply = network.add_edge(0, 2, 2, -1000, 0);
        let cheap = network.add_edge(2, 3, 1, 1, 0);
        let dear = network.add_edge(2, 4, 5, 7, 0);
        network.add_edge(3, 1, 5, 0, 0);
        network.add_edge(4, 1, 5, 0, 0);
        network.augment_while_negative(0, 1);
        assert_eq!(network.flow(supply), 2);
        assert_eq!(network.flow(cheap), 1);
        assert_eq!(network.flow(dear), 1);
    }
}
