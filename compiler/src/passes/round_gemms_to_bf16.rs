//! `round_gemms_to_bf16`: the 1x1 convolutions (`pwconv1`, `pwconv2`) and the downsampling
//! convs run their products in bf16.
//!
//! For a linear layer over pixel rows (or a conv over non-overlapping patches, NHWC: a linear
//! layer over gathered patches), `y = x W^T + b` becomes
//!
//! ```text
//! y[r, n] ~= sum_k bf16(x[r, k]) bf16(W[n, k]) + b[n]      (products exact, sums in f32)
//! ```
//!
//! with `bf16` rounding to nearest even (the weights once at load, each row after the
//! prologue while it is packed): the same prologue and epilogue around a product whose
//! operands carry 8 significant bits ([`cnx_runtime::kernels::bf16`] states the scheme; each
//! output is within `sum_k |x_k W_k| (2^-7 + (K + 1) 2^-24)` of the exact product, tested per
//! kernel). Like `quantize_gemms_to_int8` it does not keep the graph's value exactly: it is
//! opt-in (`--precision bf16`), never in the default pipeline. What stays f32 is what stays f32
//! in int8 (the stem, the depthwise convs, the statistics, GELU, residuals, the head).

use crate::ir::{Graph, NodeId, Precision};

use super::quantize_gemms_to_int8::run_gemm_in;
use super::Pass;

pub struct RoundGemmsToBf16;

impl Pass for RoundGemmsToBf16 {
    fn name(&self) -> &'static str {
        "round_gemms_to_bf16"
    }

    fn summary(&self) -> &'static str {
        "1x1 convs and downsampling convs run their products in bf16"
    }

    fn rewrite(&self, graph: &mut Graph, id: NodeId) -> bool {
        run_gemm_in(graph, id, Precision::Bf16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::testing::*;
    use crate::passes::Pipeline;

    /// After the default pipeline: every block's two Linears and each downsampling conv run in
    /// bf16; the stem, the depthwise convs and the head stay f32. Nothing else changes.
    #[test]
    fn structure_after() {
        let mut g = custom_graph((64, 64));
        Pipeline::default_pipeline().run(&mut g).unwrap();
        let after = apply(&RoundGemmsToBf16, &g);
        assert_eq!(after.node_count(), g.node_count());
        let op = |name: &str| after.node(after.find(name).unwrap()).op.to_string();
        let block = "convnextv2.encoder.stages.1.layers.0";
        assert!(op(&format!("{block}.pwconv1")).ends_with(", bf16)"));
        assert!(op(&format!("{block}.pwconv2")).ends_with(", bf16)"));
        assert!(!op(&format!("{block}.dwconv")).contains("bf16"));
        assert!(op("convnextv2.encoder.stages.1.downsampling_layer.1").ends_with(", bf16)"));
        assert!(!op("convnextv2.embeddings.patch_embeddings").contains("bf16"));
        assert!(!op("classifier").contains("bf16"));
        let bf16 = after
            .topo_order()
            .unwrap()
            .into_iter()
            .filter(|&id| after.node(id).op.to_string().contains("bf16"))
            .count();
        // Five blocks (two Linears each) and three downsampling convs.
        assert_eq!(bf16, 5 * 2 + 3);
    }

    /// Numerically: on every test config (97x75 batch 3, 64x64 batch 2, random weights), the
    /// bf16 graph's outputs stay near the f32 graph's and yet differ from them (the products
    /// did run in bf16). Bound: 3% of each output's largest magnitude. Each product's operands
    /// carry a relative rounding error of at most 2^-8 (0.4%); through a dozen layers this
    /// measured (printed) at most 0.5% on this machine's kernels (AMX, and the portable and
    /// FMA kernels' order under `CNX_ISA`); a wrong rounding, pair order or layout moves
    /// outputs by their whole magnitude.
    #[test]
    fn numerically_close_to_f32() {
        check_precision_against_f32(Precision::Bf16, 0.03);
    }
}
