//! `quantize_gemms_to_int8`: the 1x1 convolutions (`pwconv1`, `pwconv2`) and the downsampling
//! convs run their products in int8.
//!
//! For a linear layer over pixel rows (or a conv over non-overlapping patches, NHWC: a linear
//! layer over gathered patches), `y = x W^T + b` becomes
//!
//! ```text
//! y[r, n] ~= s_a[r] s_w[n] (sum_k q_a[r, k] q_w[n, k] - z[r] sum_k q_w[n, k]) + b[n]
//! ```
//!
//! with `q_w = round(W / s_w)` (per output channel, quantised once at load) and `q_a =
//! round(x / s_a) + z` (per row, while the prologue packs the row): the same prologue and
//! epilogue, around an approximate product ([`cnx_runtime::kernels::quantize`] states the
//! scheme and bounds its error). Unlike every other pass this one does not keep the graph's
//! value exactly: it is opt-in (`--precision int8`), never in the default pipeline.
//!
//! What stays f32: the stem (its input is the pixels: three channels, a sliver of the work),
//! the depthwise convs, every LayerNorm's statistics, GELU, GRN's statistics, the residual
//! adds and the head (one small product per image, whose logits are the answer).

use crate::ir::{Graph, Layout, NodeId, Op, Precision};

use super::Pass;

pub struct QuantizeGemmsToInt8;

impl Pass for QuantizeGemmsToInt8 {
    fn name(&self) -> &'static str {
        "quantize_gemms_to_int8"
    }

    fn summary(&self) -> &'static str {
        "1x1 convs and downsampling convs run their products in int8"
    }

    fn rewrite(&self, graph: &mut Graph, id: NodeId) -> bool {
        run_gemm_in(graph, id, Precision::Int8)
    }
}

/// Marks `id` to run its product in `precision` if it is one of the GEMMs that run in low
/// precision (a Linear over pixel rows, or an NHWC conv over non-overlapping patches that
/// does not read the pixels) and still f32; whether it did. The rewrite of both
/// `quantize_gemms_to_int8` and `round_gemms_to_bf16`.
pub(super) fn run_gemm_in(graph: &mut Graph, id: NodeId, precision: Precision) -> bool {
    let op = match graph.node(id).op {
        // Over the pixels of an image (not the head's pooled features).
        Op::Linear(l)
            if l.precision == Precision::F32 && graph.node(id).ty.layout == Layout::Nhwc =>
        {
            Op::Linear(crate::ir::Linear { precision, ..l })
        }
        Op::Conv2d(c)
            if c.precision == Precision::F32
                && c.layout == Layout::Nhwc
                && c.groups == 1
                && c.kernel == c.stride
                && c.padding == [0, 0]
                && !reads_the_pixels(graph, id) =>
        {
            Op::Conv2d(crate::ir::Conv2d { precision, ..c })
        }
        _ => return false,
    };
    // The op's operands and output type are unchanged: only how it computes.
    graph.node_mut(id).op = op;
    true
}

/// Whether `id` reads the graph's input, directly or through layout permutes (the stem).
fn reads_the_pixels(graph: &Graph, id: NodeId) -> bool {
    graph.inputs(id).iter().any(|&i| match graph.node(i).op {
        Op::Input => true,
        Op::Permute(_) => reads_the_pixels(graph, i),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::testing::*;
    use crate::passes::Pipeline;

    /// After the default pipeline: every block's two Linears and each downsampling conv run in
    /// int8; the stem, the depthwise convs and the head stay f32. Nothing else changes.
    #[test]
    fn structure_after() {
        let mut g = custom_graph((64, 64));
        Pipeline::default_pipeline().run(&mut g).unwrap();
        let after = apply(&QuantizeGemmsToInt8, &g);
        assert_eq!(after.node_count(), g.node_count());
        let op = |name: &str| after.node(after.find(name).unwrap()).op.to_string();
        let block = "convnextv2.encoder.stages.1.layers.0";
        assert!(op(&format!("{block}.pwconv1")).ends_with(", int8)"));
        assert!(op(&format!("{block}.pwconv2")).ends_with(", int8)"));
        assert!(!op(&format!("{block}.dwconv")).contains("int8"));
        assert!(op("convnextv2.encoder.stages.1.downsampling_layer.1").ends_with(", int8)"));
        assert!(!op("convnextv2.embeddings.patch_embeddings").contains("int8"));
        let int8 = after
            .topo_order()
            .unwrap()
            .into_iter()
            .filter(|&id| after.node(id).op.to_string().contains("int8"))
            .count();
        // Five blocks (two Linears each) and three downsampling convs.
        assert_eq!(int8, 5 * 2 + 3);
    }

    /// Numerically: on every test config (97x75 batch 3, 64x64 batch 2, random weights), the
    /// int8 graph's outputs stay near the f32 graph's and yet differ from them (the products
    /// did run in int8). Bound: 10% of each output's largest magnitude. Each int8 product is
    /// off by at most half a step of its row's and its column's scale per term
    /// (`quantize::error_bound`, tested per kernel); through a dozen such layers this measured
    /// (printed) at most 3.6% with 8-bit weights (AVX-512 VNNI, portable) and 5.2% with AVX2's
    /// 7-bit ones (`CNX_ISA=avx2`: half the weight resolution); a wrong scale, zero point or
    /// column sum moves outputs by their whole magnitude.
    #[test]
    fn numerically_close_to_f32() {
        check_int8_against_f32(0.10);
    }

    /// The unfused graph: its Linears (NHWC, as Hugging Face permutes around them) run in int8;
    /// its convs are NCHW (the reference loops) and stay f32, and so does the classifier.
    #[test]
    fn unfused_graph_quantises_its_linears_only() {
        let g = custom_graph((64, 64));
        let after = apply(&QuantizeGemmsToInt8, &g);
        let op = |name: &str| after.node(after.find(name).unwrap()).op.to_string();
        assert!(op("convnextv2.encoder.stages.0.layers.0.pwconv1").ends_with(", int8)"));
        assert!(!op("convnextv2.encoder.stages.1.downsampling_layer.1").contains("int8"));
        assert!(!op("classifier").contains("int8"));
    }
}
