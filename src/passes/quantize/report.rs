//! The rewrite's report: one entry per candidate node (quantized, or skipped with the reason),
//! weight bytes before and after, and totals. Serialized as JSON by `rewrite --report`.

use serde::Serialize;

/// What happened to one node.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct NodeReport {
    /// Enclosing control-flow nodes and attributes, outermost first ("" for the main graph).
    pub scope: String,
    /// The node's name in the input model (its first output when it has none).
    pub node: String,
    pub op_type: String,
    pub quantized: bool,
    /// How it was quantized, or why it stayed float.
    pub reason: String,
    /// Bytes of the constant inputs the node read in the input model. A tensor read by
    /// several nodes counts for the first of them (quantized nodes in walk order, then the
    /// others), so that the totals are the bytes of distinct tensors.
    pub weight_bytes_before: u64,
    /// Bytes of the constants the replacement reads (those of the node itself when
    /// skipped), counted once likewise: a quantized weight shared by two replacements
    /// counts for the first.
    pub weight_bytes_after: u64,
    /// The Linear unit a MatMul/Gemm heads ("Linear+bias+Relu"), whose bias and activation
    /// follow the quantized product directly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// With an accuracy target: how much quantizing this node alone costs (see
    /// [`super::target`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<super::target::Sensitivity>,
    /// A quantized MatMul/Gemm: the activation mode it got (per-tensor or per-token) and why
    /// (see [`super::activation_choice`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activations: Option<super::activation_choice::ActivationChoice>,
}

/// Sums over the nodes and the files.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Totals {
    pub nodes_quantized: usize,
    pub nodes_skipped: usize,
    pub weight_bytes_before: u64,
    pub weight_bytes_after: u64,
    /// Model file plus external data files, as read.
    pub file_bytes_before: u64,
    /// Model file plus external data file, as written (0 until saved).
    pub file_bytes_after: u64,
    pub seconds: f64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct QuantizeReport {
    pub input: String,
    pub output: String,
    pub nodes: Vec<NodeReport>,
    pub totals: Totals,
    /// Fire counts of the cleanup and fusion passes (absent with `--no-fuse`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fusion: Option<crate::passes::fuse::FuseReport>,
}

impl QuantizeReport {
    /// Recomputes the node counts and weight totals from `nodes`.
    pub fn sum_nodes(&mut self) {
        let t = &mut self.totals;
        t.nodes_quantized = self.nodes.iter().filter(|n| n.quantized).count();
        t.nodes_skipped = self.nodes.len() - t.nodes_quantized;
        t.weight_bytes_before = self.nodes.iter().map(|n| n.weight_bytes_before).sum();
        t.weight_bytes_after = self.nodes.iter().map(|n| n.weight_bytes_after).sum();
    }

    /// The short summary the CLI prints at the end.
    pub fn summary(&self) -> String {
        let t = &self.totals;
        let units: Vec<&str> = self
            .nodes
            .iter()
            .filter(|n| n.quantized)
            .filter_map(|n| n.unit.as_deref())
            .collect();
        let mut s = format!(
            "quantized {} node(s), skipped {}; weights {} -> {}; file {} -> {}; {:.2} s",
            t.nodes_quantized,
            t.nodes_skipped,
            human_bytes(t.weight_bytes_before),
            human_bytes(t.weight_bytes_after),
            human_bytes(t.file_bytes_before),
            human_bytes(t.file_bytes_after),
            t.seconds
        );
        if !units.is_empty() {
            let act = units
                .iter()
                .filter(|u| u.matches('+').count() > u.contains("+bias") as usize)
                .count();
            s.push_str(&format!(
                "; {} Linear unit(s) ({} with activation)",
                units.len(),
                act
            ));
        }
        let per_token = self
            .nodes
            .iter()
            .filter_map(|n| n.activations.as_ref())
            .filter(|c| c.mode == super::rewrite::ActivationQuant::PerToken)
            .count();
        if per_token > 0 {
            s.push_str(&format!("; {per_token} with per-token activations"));
        }
        if let Some(f) = &self.fusion {
            s.push_str(&format!("; fused: {}", f.summary()));
        }
        s
    }
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_follow_nodes() {
        let node = |q: bool, b: u64, a: u64| NodeReport {
            scope: String::new(),
            node: "n".into(),
            op_type: "MatMul".into(),
            quantized: q,
            reason: String::new(),
            weight_bytes_before: b,
            weight_bytes_after: a,
            unit: None,
            sensitivity: None,
            activations: None,
        };
        let mut r = QuantizeReport {
            nodes: vec![node(true, 400, 104), node(false, 40, 40)],
            ..Default::default()
        };
        r.sum_nodes();
        assert_eq!(r.totals.nodes_quantized, 1);
        assert_eq!(r.totals.nodes_skipped, 1);
        assert_eq!(r.totals.weight_bytes_before, 440);
        assert_eq!(r.totals.weight_bytes_after, 144);
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
