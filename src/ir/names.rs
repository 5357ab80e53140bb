//! Fresh, unique, deterministic names for values, nodes and initializers that passes create.

use std::collections::HashSet;

use super::graph::Graph;

/// Hands out names that collide with nothing in the graph (including its subgraphs) nor with
/// each other. The same graph and the same requests give the same names.
#[derive(Debug, Default, Clone)]
pub struct NameGen {
    taken: HashSet<String>,
}

impl NameGen {
    pub fn new(graph: &Graph) -> Self {
        let mut taken = HashSet::new();
        graph.visit(&mut |g: &Graph| {
            taken.insert(g.name().to_string());
            taken.extend(g.proto.input.iter().map(|v| v.name().to_string()));
            taken.extend(g.proto.output.iter().map(|v| v.name().to_string()));
            taken.extend(g.proto.value_info.iter().map(|v| v.name().to_string()));
            taken.extend(g.initializers.keys().cloned());
            for n in &g.nodes {
                taken.insert(n.name().to_string());
                taken.extend(n.inputs().iter().cloned());
                taken.extend(n.outputs().iter().cloned());
            }
        });
        NameGen { taken }
    }

    /// `base` itself if free, else `base_1`, `base_2`, ...
    pub fn fresh(&mut self, base: &str) -> String {
        let mut candidate = base.to_string();
        let mut i = 1usize;
        while self.taken.contains(&candidate) || candidate.is_empty() {
            candidate = format!("{base}_{i}");
            i += 1;
        }
        self.taken.insert(candidate.clone());
        candidate
    }

    /// Marks a name as used without generating it.
    pub fn reserve(&mut self, name: &str) {
        self.taken.insert(name.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::Node;

    #[test]
    fn never_repeats_a_name() {
        let mut g = Graph::default();
        g.nodes.push(Node::new(
            "n",
            "Relu",
            "",
            vec!["x".into()],
            vec!["y".into()],
        ));
        let mut names = NameGen::new(&g);
        assert_eq!(names.fresh("y"), "y_1");
        assert_eq!(names.fresh("y"), "y_2");
        assert_eq!(names.fresh("z"), "z");
        assert_eq!(names.fresh("z"), "z_1");
        assert_eq!(names.fresh("n"), "n_1");
    }
}
