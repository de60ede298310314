//! The step graph while the passes build it: steps in insertion order and edges between
//! their positions. Shared steps may be added more than once (same key); the dedupe pass
//! merges them, the reduction pass drops implied edges, and numbering turns the draft into the
//! plan's DAG in a topological order.

use super::{PlanError, SaPair, Step};
use foldhash::{HashMap, HashMapExt};
use petgraph::algo::tred::{dag_to_toposorted_adjacency_list, dag_transitive_reduction_closure};
use petgraph::graph::{DiGraph, NodeIndex};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// The steps of one moving VM, by position in the draft.
#[derive(Debug, Clone, Default)]
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
pub(crate) struct Draft {
    pub steps: Vec<Step>,
    /// `(a, b)`: `b` runs after `a`.
    pub edges: Vec<(usize, usize)>,
    /// Per moving VM. Positions are valid until the dedupe pass.
    pub vm: HashMap<String, VmSteps>,
    /// Per installed SA, its initiating end (the step after which the SA is up). Positions
    /// are valid until the dedupe pass.
    pub sa_up: HashMap<SaPair, usize>,
}

impl Draft {
    /// An empty draft with room for about `steps` steps.
    pub fn with_capacity(steps: usize) -> Self {
        Draft {
            steps: Vec::with_capacity(steps),
            edges: Vec::with_capacity(steps + steps / 4),
            vm: HashMap::with_capacity(steps / 6),
            sa_up: HashMap::new(),
        }
    }

    /// Adds a step, returning its position.
    pub fn add(&mut self, step: Step) -> usize {
        self.steps.push(step);
        self.steps.len() - 1
    }

    /// Adds an edge `from -> to` when `from` exists.
    pub fn edge(&mut self, from: Option<usize>, to: usize) {
        if let Some(from) = from {
            self.edges.push((from, to));
        }
    }

    /// The steps of a moving VM (empty when it has none yet).
    pub fn vm(&self, name: &str) -> VmSteps {
        self.vm.get(name).cloned().unwrap_or_default()
    }

    /// Merges steps with the same key into the first one; edges follow, self-loops and
    /// duplicates go.
    pub fn dedupe(&mut self) {
        let mut first: HashMap<&str, usize> = HashMap::with_capacity(self.steps.len());
        let mut remap = Vec::with_capacity(self.steps.len());
        let mut keep = Vec::with_capacity(self.steps.len());
        let mut kept = 0usize;
        for (i, s) in self.steps.iter().enumerate() {
            match first.get(s.key.as_str()) {
                Some(&to) => {
                    remap.push(remap[to]);
                    keep.push(false);
                }
                None => {
                    first.insert(s.key.as_str(), i);
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
        let mut k = keep.iter();
        self.steps.retain(|_| k.next().copied().unwrap_or(false));
        for e in &mut self.edges {
            *e = (remap[e.0], remap[e.1]);
        }
        self.edges.retain(|(a, b)| a != b);
        self.edges.sort_unstable();
        self.edges.dedup();
        self.vm.clear();
        self.sa_up.clear();
    }

    /// The petgraph view of the draft (node weight = position).
    fn graph(&self) -> DiGraph<usize, ()> {
        let mut g = DiGraph::with_capacity(self.steps.len(), self.edges.len());
        for i in 0..self.steps.len() {
            g.add_node(i);
        }
        for &(a, b) in &self.edges {
            g.add_edge(NodeIndex::new(a), NodeIndex::new(b), ());
        }
        g
    }

    fn cycle_error(&self, at: usize) -> PlanError {
        PlanError::Cycle {
            step: self.steps[at].key.clone(),
        }
    }

    /// Drops every edge implied by a longer path.
    pub fn reduce(&mut self) -> Result<(), PlanError> {
        let g = self.graph();
        let topo = petgraph::algo::toposort(&g, None)
            .map_err(|c| self.cycle_error(c.node_id().index()))?;
        let (list, _) = dag_to_toposorted_adjacency_list::<_, u32>(&g, &topo);
        let (reduced, _closure) = dag_transitive_reduction_closure(&list);
        let mut edges = Vec::with_capacity(reduced.edge_count());
        for (rank, &node) in topo.iter().enumerate() {
            for next in petgraph::visit::IntoNeighbors::neighbors(&reduced, rank as u32) {
                edges.push((node.index(), topo[next as usize].index()));
            }
        }
        edges.sort_unstable();
        self.edges = edges;
        Ok(())
    }

    /// Groups for numbering: a VM's steps get the VM's group (`vm_group` of the VM name);
    /// shared steps (SAs, tunnels, route checks) the smallest group of their neighbours.
    pub fn groups(&self, vm_group: impl Fn(&str) -> Option<u32>) -> Vec<u32> {
        let mut group: Vec<u32> = self
            .steps
            .iter()
            .map(|s| {
                s.subject
                    .strip_prefix("vm.")
                    .and_then(&vm_group)
                    .unwrap_or(u32::MAX)
            })
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
        let mut indegree = vec![0usize; n];
        let mut out: Vec<Vec<usize>> = vec![Vec::new(); n];
        for &(a, b) in &self.edges {
            indegree[b] += 1;
            out[a].push(b);
        }
        let mut ready: BinaryHeap<Reverse<(u32, usize)>> = (0..n)
            .filter(|&i| indegree[i] == 0)
            .map(|i| Reverse(prio(i)))
            .collect();
        let mut order = Vec::with_capacity(n);
        while let Some(Reverse((_, i))) = ready.pop() {
            order.push(i);
            for &b in &out[i] {
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
        // Put each step at its number in place (cycle-following swaps: no second copy).
        let mut steps = self.steps;
        for i in 0..n {
            while number[i] != i {
                let j = number[i];
                steps.swap(i, j);
                number.swap(i, j);
            }
        }
        let mut g = DiGraph::with_capacity(n, edges.len());
        for step in steps {
            g.add_node(step);
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
            subject: key.to_string(),
            target: Target::Host(host.clone()),
            action: Action::Cleanup {
                vm: key.to_string(),
                host,
                ipsec_links: vec![],
            },
            precondition: vec![],
            effect: vec![],
            inverse: Inverse::Nothing,
        }
    }

    fn draft(keys: &[&str], edges: &[(usize, usize)]) -> Draft {
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
