//! The step graph while the passes build it: steps in insertion order and edges between
//! their positions. Shared steps may be added more than once (same key); the dedupe pass
//! merges them, the reduction pass drops implied edges, and numbering turns the draft into the
//! plan's DAG in a topological order.

use super::{PlanError, SaPair, Step};
use foldhash::{HashMap, HashMapExt};
use petgraph::graph::{DiGraph, NodeIndex};
use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::BinaryHeap;
use std::ops::Index;

/// Steps per chunk of [`Steps`]: a chunk stays well below the size from which the system
/// allocator maps fresh pages for each allocation (128 KiB at first).
const CHUNK: usize = 256;

/// The draft's steps, by position, in fixed-size chunks. One vector of every step would be
/// the plan's largest allocation: at 100k VMs the system allocator maps it afresh for each
/// plan, and writing it faults in every page; chunks are recycled like any small allocation.
#[derive(Debug, Default)]
pub(crate) struct Steps {
    chunks: Vec<Vec<Step>>,
    len: usize,
}

impl Steps {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn push(&mut self, step: Step) {
        match self.chunks.last_mut() {
            Some(c) if c.len() < CHUNK => c.push(step),
            _ => {
                let mut c = Vec::with_capacity(CHUNK);
                c.push(step);
                self.chunks.push(c);
            }
        }
        self.len += 1;
    }

    pub fn iter(&self) -> impl Iterator<Item = &Step> {
        self.chunks.iter().flatten()
    }

    /// Keeps the steps whose `keep` entry is true, in order.
    fn retain(&mut self, keep: &[bool]) {
        let mut kept = Steps::default();
        for (s, &k) in std::mem::take(self).chunks.into_iter().flatten().zip(keep) {
            if k {
                kept.push(s);
            }
        }
        *self = kept;
    }
}

impl Index<usize> for Steps {
    type Output = Step;
    fn index(&self, i: usize) -> &Step {
        &self.chunks[i / CHUNK][i % CHUNK]
    }
}

/// The steps of one moving VM, by position in the draft.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct VmSteps {
    pub block: Option<usize>,
    /// Block-first only: the block waiting on the target host before the VM arrives.
    pub block_target: Option<usize>,
    pub shutdown: Option<usize>,
    pub migrate: Option<usize>,
    pub tunnel_add: Option<usize>,
    pub restart: Option<usize>,
    pub secure: Option<usize>,
    pub enable: Option<usize>,
}

/// The graph under construction.
#[derive(Debug, Default)]
pub(crate) struct Draft<'d> {
    pub steps: Steps,
    /// Per step, the position in `Diff::moves` of the move it belongs to (`u32::MAX`:
    /// shared). Numbering keeps a VM's steps together by it.
    pub owner: Vec<u32>,
    /// `(a, b)`: `b` runs after `a`.
    pub edges: Vec<(usize, usize)>,
    /// Per moving VM, by its position in `Diff::moves`. Positions are valid until the dedupe
    /// pass.
    pub vm: Vec<VmSteps>,
    /// Per installed SA, its initiating end (the step after which the SA is up). Positions
    /// are valid until the dedupe pass.
    pub sa_up: HashMap<&'d SaPair, usize>,
}

impl<'d> Draft<'d> {
    /// An empty draft with room for about `steps` steps.
    pub fn with_capacity(steps: usize, moves: usize) -> Self {
        Draft {
            steps: Steps::default(),
            owner: Vec::with_capacity(steps),
            edges: Vec::with_capacity(steps + steps / 4),
            vm: vec![VmSteps::default(); moves],
            sa_up: HashMap::new(),
        }
    }

    /// Adds a shared step (an SA end, a tunnel), returning its position.
    pub fn add(&mut self, step: Step) -> usize {
        self.steps.push(step);
        self.owner.push(u32::MAX);
        self.steps.len() - 1
    }

    /// Adds a step of the move at `mover` in `Diff::moves`, returning its position.
    pub fn add_for(&mut self, mover: usize, step: Step) -> usize {
        self.steps.push(step);
        self.owner.push(mover as u32);
        self.steps.len() - 1
    }

    /// Adds an edge `from -> to` when `from` exists.
    pub fn edge(&mut self, from: Option<usize>, to: usize) {
        if let Some(from) = from {
            self.edges.push((from, to));
        }
    }

    /// The steps of the move at `mover` in `Diff::moves` (empty when it has none yet).
    pub fn vm(&self, mover: usize) -> VmSteps {
        self.vm.get(mover).copied().unwrap_or_default()
    }

    /// The steps of the move at `mover`, to record one.
    pub fn vm_mut(&mut self, mover: usize) -> &mut VmSteps {
        if mover >= self.vm.len() {
            self.vm.resize(mover + 1, VmSteps::default());
        }
        &mut self.vm[mover]
    }

    /// Merges steps with the same key into the first one; edges follow, self-loops and
    /// duplicates go. Only shared steps can repeat: a move's own steps have keys of their own
    /// (the VM's subject, one step per kind and host), so only shared keys are looked up.
    pub fn dedupe(&mut self) {
        let shared = self
            .owner
            .iter()
            .filter(|&&o| o == u32::MAX)
            .count()
            .max(self.steps.len().saturating_sub(self.owner.len()));
        let mut first: HashMap<&str, usize> = HashMap::with_capacity(shared);
        let mut remap = Vec::with_capacity(self.steps.len());
        let mut keep = Vec::with_capacity(self.steps.len());
        let mut kept = 0usize;
        for (i, s) in self.steps.iter().enumerate() {
            let own = self.owner.get(i).is_some_and(|&o| o != u32::MAX);
            let seen = if own {
                None
            } else {
                match first.entry(s.key.as_str()) {
                    Entry::Occupied(e) => Some(*e.get()),
                    Entry::Vacant(e) => {
                        e.insert(i);
                        None
                    }
                }
            };
            match seen {
                Some(to) => {
                    remap.push(remap[to]);
                    keep.push(false);
                }
                None => {
                    remap.push(kept);
                    keep.push(true);
                    kept += 1;
                }
            }
        }
        if kept == self.steps.len() {
            self.edges.sort_unstable();
            self.edges.dedup();
            return;
        }
        self.steps.retain(&keep);
        let mut k = keep.iter();
        self.owner.retain(|_| k.next().copied().unwrap_or(false));
        for e in &mut self.edges {
            *e = (remap[e.0], remap[e.1]);
        }
        self.edges.retain(|(a, b)| a != b);
        self.edges.sort_unstable();
        self.edges.dedup();
        self.vm.clear();
        self.sa_up.clear();
    }

    fn cycle_error(&self, at: usize) -> PlanError {
        PlanError::Cycle {
            step: self.steps[at].key.clone(),
        }
    }

    /// Drops every edge implied by a longer path.
    ///
    /// Nodes are visited in reverse topological order; a node's successors in topological
    /// order. An edge `u -> v` is implied when `v` is reachable from a successor of `u` that
    /// comes before `v`; the walk from each kept successor marks what it reaches. Branches are
    /// per VM, link and subnet, so each walk stays local.
    pub fn reduce(&mut self) -> Result<(), PlanError> {
        let n = self.steps.len();
        // Outgoing edges, grouped by source (edges are sorted by dedupe).
        self.edges.sort_unstable();
        let mut start = vec![0u32; n + 1];
        for &(a, _) in &self.edges {
            start[a + 1] += 1;
        }
        for i in 0..n {
            start[i + 1] += start[i];
        }
        let out = |u: usize| &self.edges[start[u] as usize..start[u + 1] as usize];
        // Topological rank (Kahn).
        let mut indegree = vec![0u32; n];
        for &(_, b) in &self.edges {
            indegree[b] += 1;
        }
        let mut order: Vec<u32> = (0..n as u32)
            .filter(|&i| indegree[i as usize] == 0)
            .collect();
        order.reserve(n - order.len());
        let mut head = 0;
        while head < order.len() {
            let u = order[head] as usize;
            head += 1;
            for &(_, b) in out(u) {
                indegree[b] -= 1;
                if indegree[b] == 0 {
                    order.push(b as u32);
                }
            }
        }
        if order.len() != n {
            let at = (0..n).find(|&i| indegree[i] > 0).unwrap_or(0);
            return Err(self.cycle_error(at));
        }
        let mut rank = vec![0u32; n];
        for (r, &u) in order.iter().enumerate() {
            rank[u as usize] = r as u32;
        }
        let mut keep = vec![true; self.edges.len()];
        let mut stamp = vec![u32::MAX; n];
        let mut stack: Vec<usize> = Vec::new();
        let mut succ: Vec<(u32, usize)> = Vec::new();
        for &u in order.iter().rev() {
            let u = u as usize;
            let (lo, hi) = (start[u] as usize, start[u + 1] as usize);
            if hi - lo < 2 {
                continue; // a single successor is never implied
            }
            succ.clear();
            succ.extend((lo..hi).map(|e| (rank[self.edges[e].1], e)));
            succ.sort_unstable();
            let mark = u as u32;
            for &(_, e) in &succ {
                let v = self.edges[e].1;
                if stamp[v] == mark {
                    keep[e] = false;
                    continue;
                }
                stamp[v] = mark;
                stack.push(v);
                while let Some(w) = stack.pop() {
                    for &(_, x) in out(w) {
                        if stamp[x] != mark {
                            stamp[x] = mark;
                            stack.push(x);
                        }
                    }
                }
            }
        }
        let mut k = keep.iter();
        self.edges.retain(|_| k.next().copied().unwrap_or(true));
        Ok(())
    }

    /// Groups for numbering: a VM's steps get the position of its move; shared steps (SAs,
    /// tunnels, route checks) the smallest group of their neighbours.
    pub fn groups(&self) -> Vec<u32> {
        let mut group: Vec<u32> = (0..self.steps.len())
            .map(|i| self.owner.get(i).copied().unwrap_or(u32::MAX))
            .collect();
        let shared: Vec<bool> = group.iter().map(|g| *g == u32::MAX).collect();
        // Two rounds reach shared steps that only touch other shared steps (tunnel.remove).
        for _ in 0..2 {
            for &(a, b) in &self.edges {
                if shared[a] {
                    group[a] = group[a].min(group[b]);
                }
                if shared[b] {
                    group[b] = group[b].min(group[a]);
                }
            }
        }
        group
    }

    /// Numbers the steps topologically and returns the plan's DAG (node index = step number).
    /// Among the ready steps the smallest `(group, position)` goes first, so a VM's steps stay
    /// together and, within them, FIG. 3 order holds.
    pub fn into_graph(self, group: &[u32]) -> Result<DiGraph<Step, ()>, PlanError> {
        let n = self.steps.len();
        let prio = |i: usize| (group.get(i).copied().unwrap_or(u32::MAX), i);
        let mut indegree = vec![0u32; n];
        // Successors of `a` are `succ[start[a]..start[a + 1]]`.
        let mut start = vec![0u32; n + 1];
        for &(a, b) in &self.edges {
            indegree[b] += 1;
            start[a + 1] += 1;
        }
        for i in 0..n {
            start[i + 1] += start[i];
        }
        let mut fill = start.clone();
        let mut succ = vec![0u32; self.edges.len()];
        for &(a, b) in &self.edges {
            succ[fill[a] as usize] = b as u32;
            fill[a] += 1;
        }
        drop(fill);
        let out = |a: usize| &succ[start[a] as usize..start[a + 1] as usize];
        let mut ready: BinaryHeap<Reverse<(u32, usize)>> = (0..n)
            .filter(|&i| indegree[i] == 0)
            .map(|i| Reverse(prio(i)))
            .collect();
        let mut order = Vec::with_capacity(n);
        while let Some(Reverse((_, i))) = ready.pop() {
            order.push(i);
            for &b in out(i) {
                let b = b as usize;
                indegree[b] -= 1;
                if indegree[b] == 0 {
                    ready.push(Reverse(prio(b)));
                }
            }
        }
        if order.len() != n {
            let at = (0..n).find(|&i| indegree[i] > 0).unwrap_or(0);
            return Err(self.cycle_error(at));
        }
        let mut number = vec![0usize; n];
        for (k, &i) in order.iter().enumerate() {
            number[i] = k;
        }
        let mut edges: Vec<(usize, usize)> = self
            .edges
            .iter()
            .map(|&(a, b)| (number[a], number[b]))
            .collect();
        edges.sort_unstable();
        // Move each step into the graph in numbering order (one move per step; the slots
        // reuse the chunks' buffers).
        let mut slots: Vec<Vec<Option<Step>>> = self
            .steps
            .chunks
            .into_iter()
            .map(|c| c.into_iter().map(Some).collect())
            .collect();
        let mut g = DiGraph::with_capacity(n, edges.len());
        for &i in &order {
            if let Some(step) = slots[i / CHUNK][i % CHUNK].take() {
                g.add_node(step);
            }
        }
        for (a, b) in edges {
            g.add_edge(NodeIndex::new(a), NodeIndex::new(b), ());
        }
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HostId;
    use crate::plan::{Action, Inverse, StepKind, Target};

    fn step(key: &str) -> Step {
        let host = HostId::new("dc", "hv1");
        Step {
            key: key.to_string(),
            kind: StepKind::Cleanup,
            subject: key.into(),
            target: Target::Host(host.clone()),
            action: Action::Cleanup {
                vm: key.into(),
                host,
                ipsec_links: vec![],
            },
            precondition: vec![],
            effect: vec![],
            inverse: Inverse::Nothing,
        }
    }

    fn draft(keys: &[&str], edges: &[(usize, usize)]) -> Draft<'static> {
        let mut d = Draft::default();
        for k in keys {
            d.add(step(k));
        }
        d.edges = edges.to_vec();
        d
    }

    #[test]
    fn dedupe_merges_same_keys_and_their_edges() {
        // a -> s, b -> s' (s and s' share a key), s -> c, s' -> s (self loop after merge).
        let mut d = draft(
            &["a", "s", "b", "s", "c"],
            &[(0, 1), (2, 3), (1, 4), (3, 1)],
        );
        d.dedupe();
        let keys: Vec<&str> = d.steps.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["a", "s", "b", "c"]);
        assert_eq!(d.edges, [(0, 1), (1, 3), (2, 1)]);
    }

    #[test]
    fn reduction_drops_implied_edges() {
        let mut d = draft(&["a", "b", "c"], &[(0, 1), (1, 2), (0, 2)]);
        d.reduce().unwrap();
        assert_eq!(d.edges, [(0, 1), (1, 2)]);
    }

    #[test]
    fn reduction_matches_petgraph_on_random_dags() {
        use petgraph::algo::tred::{
            dag_to_toposorted_adjacency_list, dag_transitive_reduction_closure,
        };
        let mut seed = 0x5eed_u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        for round in 0..200 {
            let n = 2 + (round % 30) as usize;
            // Edges go from a lower to a higher rank of a random permutation: a DAG whose
            // positions are not in topological order.
            let mut perm: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                perm.swap(i, next(i as u64 + 1) as usize);
            }
            let mut edges = Vec::new();
            for _ in 0..next(3 * n as u64) {
                let (x, y) = (next(n as u64) as usize, next(n as u64) as usize);
                if x < y {
                    edges.push((perm[x], perm[y]));
                }
            }
            edges.sort_unstable();
            edges.dedup();
            let keys: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
            let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            let mut d = draft(&key_refs, &edges);
            d.reduce().unwrap();

            let mut g = DiGraph::<(), ()>::new();
            let nodes: Vec<_> = (0..n).map(|_| g.add_node(())).collect();
            for &(a, b) in &edges {
                g.add_edge(nodes[a], nodes[b], ());
            }
            let topo = petgraph::algo::toposort(&g, None).unwrap();
            let (list, _) = dag_to_toposorted_adjacency_list::<_, u32>(&g, &topo);
            let (reduced, _) = dag_transitive_reduction_closure(&list);
            let mut want = Vec::new();
            for (rank, &node) in topo.iter().enumerate() {
                for next in petgraph::visit::IntoNeighbors::neighbors(&reduced, rank as u32) {
                    want.push((node.index(), topo[next as usize].index()));
                }
            }
            want.sort_unstable();
            assert_eq!(d.edges, want, "edges {edges:?}");
        }
    }

    #[test]
    fn numbering_is_topological_and_stable() {
        // Added c, a, b with b -> a -> ... : numbers follow dependencies, then insertion.
        let d = draft(&["c", "a", "b"], &[(2, 1)]);
        let g = d.into_graph(&[]).unwrap();
        let keys: Vec<&str> = g.node_weights().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["c", "b", "a"]);
        assert!(g.find_edge(NodeIndex::new(1), NodeIndex::new(2)).is_some());
    }

    #[test]
    fn a_cycle_is_an_error_naming_a_step() {
        let d = draft(&["a", "b"], &[(0, 1), (1, 0)]);
        match d.into_graph(&[]) {
            Err(PlanError::Cycle { step }) => assert!(step == "a" || step == "b"),
            other => panic!("{other:?}"),
        }
        let mut d = draft(&["a", "b"], &[(0, 1), (1, 0)]);
        assert!(d.reduce().is_err());
    }
}
