//! The graph against the ConvNeXt V2 paper's table and transformers' module tree.

use cnx_cli::ModelSpec;
use cnx_compiler::ir::{outputs, Layout, NormAxis, Op};
use cnx_compiler::{build_graph, build_graph_with, verify, BuildOptions, ConvNextV2Config};

/// The paper (Woo et al. 2023, table of model sizes) counts FLOPs with fvcore: the MACs of
/// convolutions and linear layers, plus 5 per element for every `F.layer_norm` (the channels-last
/// block LayerNorms and the final one; the channels-first ones are hand-written there and not
/// counted). Our `macs()` counts convs and linears only; this adds the LayerNorm term.
fn paper_gmacs(graph: &cnx_compiler::Graph) -> f64 {
    let ln: u64 = graph
        .petgraph()
        .node_weights()
        .filter(|n| matches!(n.op, Op::LayerNorm(ln) if ln.axis == NormAxis::ChannelsLast))
        .map(|n| 5 * n.ty.numel() as u64)
        .sum();
    (graph.macs() + ln) as f64 / 1e9
}

/// Rounds as the paper prints: 2 decimals below 10, 1 below 100, integers above.
fn paper_round(x: f64) -> f64 {
    let digits = if x >= 100.0 {
        0
    } else if x >= 10.0 {
        1
    } else {
        2
    };
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

#[test]
fn params_and_macs_match_the_paper() {
    // (preset, params M, GFLOPs as the paper prints them)
    let table = [
        ("atto-1k-224", 3.7, 0.55),
        ("femto-1k-224", 5.2, 0.78),
        ("pico-1k-224", 9.1, 1.37),
        ("nano-1k-224", 15.6, 2.45),
        ("tiny-1k-224", 28.6, 4.47),
        ("base-1k-224", 89.0, 15.4),
        ("large-1k-224", 198.0, 34.4),
        ("huge-1k-224", 660.0, 115.0),
    ];
    for (preset, params_m, gmacs) in table {
        let spec = ModelSpec::resolve(preset).unwrap();
        let g = build_graph(&spec.config, (224, 224)).unwrap();
        verify::verify(&g).unwrap();
        let p = g.num_params() as f64 / 1e6;
        let p_rounded = if params_m >= 50.0 {
            p.round()
        } else {
            (p * 10.0).round() / 10.0
        };
        assert_eq!(p_rounded, params_m, "{preset}: {p} M parameters");
        assert_eq!(
            paper_round(paper_gmacs(&g)),
            gmacs,
            "{preset}: {} GMACs",
            paper_gmacs(&g)
        );
    }
    // The exact conv + linear count for tiny, for BENCHMARKS.md and later passes to keep.
    let tiny = ModelSpec::resolve("tiny-1k-224").unwrap();
    let g = build_graph(&tiny.config, (224, 224)).unwrap();
    assert_eq!(g.num_params(), 28_635_496);
    assert_eq!(g.macs(), 4_455_531_264);
}

fn custom() -> ConvNextV2Config {
    ConvNextV2Config::from_json(
        r#"{"hidden_sizes": [8, 16, 24, 32], "depths": [1, 2, 1, 1], "num_labels": 7}"#,
    )
    .unwrap()
}

#[test]
fn mirrors_the_hf_module_tree() {
    let g = build_graph(&custom(), (64, 64)).unwrap();
    verify::verify(&g).unwrap();
    let names: Vec<&str> = g
        .topo_order()
        .unwrap()
        .into_iter()
        .map(|id| g.node(id).name.as_str())
        .collect();
    let expect_prefix = [
        "pixel_values",
        "convnextv2.embeddings.patch_embeddings",
        "convnextv2.embeddings.layernorm",
        "convnextv2.encoder.stages.0.layers.0.dwconv",
        "convnextv2.encoder.stages.0.layers.0.permute_to_nhwc",
        "convnextv2.encoder.stages.0.layers.0.layernorm",
        "convnextv2.encoder.stages.0.layers.0.pwconv1",
        "convnextv2.encoder.stages.0.layers.0.act",
        "convnextv2.encoder.stages.0.layers.0.grn",
        "convnextv2.encoder.stages.0.layers.0.pwconv2",
        "convnextv2.encoder.stages.0.layers.0.permute_to_nchw",
        "convnextv2.encoder.stages.0.layers.0.residual",
        "convnextv2.encoder.stages.1.downsampling_layer.0",
        "convnextv2.encoder.stages.1.downsampling_layer.1",
    ];
    assert_eq!(&names[..expect_prefix.len()], expect_prefix);
    assert_eq!(
        &names[names.len() - 3..],
        ["convnextv2.mean_pool", "convnextv2.layernorm", "classifier"]
    );
    // Stage 0 has no downsampling layer (in == out channels, stride 1): nn.Identity.
    assert!(g
        .find("convnextv2.encoder.stages.0.downsampling_layer.0")
        .is_none());
    // Every weight is named as HF names it.
    let pw = g.node(
        g.find("convnextv2.encoder.stages.2.layers.0.pwconv1")
            .unwrap(),
    );
    assert_eq!(
        pw.params[0].name,
        "convnextv2.encoder.stages.2.layers.0.pwconv1.weight"
    );
    assert_eq!(pw.params[0].shape, vec![96, 24]);
    let grn = g.node(g.find("convnextv2.encoder.stages.2.layers.0.grn").unwrap());
    assert_eq!(grn.params[1].shape, vec![1, 1, 1, 96]);
    // Eps: 1e-6 everywhere but the final LayerNorm.
    for id in g.topo_order().unwrap() {
        let n = g.node(id);
        if let Op::LayerNorm(ln) = n.op {
            let want = if n.name == "convnextv2.layernorm" {
                1e-12
            } else {
                1e-6
            };
            assert_eq!(ln.eps, want, "{}", n.name);
        }
    }
}

#[test]
fn any_input_size_floors_like_pytorch() {
    // 97x75: patch 4 -> 24x18, then 12x9, 6x4, 3x2.
    let g = build_graph(&custom(), (97, 75)).unwrap();
    verify::verify(&g).unwrap();
    let dims: Vec<(usize, usize)> = (0..=4)
        .map(|i| {
            let t = g.node(g.output(&outputs::hidden_state(i)).unwrap()).ty;
            assert_eq!(t.layout, Layout::Nchw);
            (t.height, t.width)
        })
        .collect();
    assert_eq!(dims, vec![(24, 18), (24, 18), (12, 9), (6, 4), (3, 2)]);
    assert_eq!(
        g.output(outputs::LAST_HIDDEN_STATE),
        g.output(&outputs::hidden_state(4))
    );
    // Too small for the last downsample: a clear error, not a panic.
    let err = build_graph(&custom(), (20, 20)).unwrap_err();
    assert!(
        err.reason
            .to_string()
            .contains("smaller than the 2-wide kernel"),
        "{err}"
    );
}

#[test]
fn heads_without_a_classifier_output_pooled_features() {
    let mut c = custom();
    c.id2label.clear();
    let g = build_graph(&c, (64, 64)).unwrap();
    assert_eq!(g.output(outputs::LOGITS), g.output(outputs::POOLER_OUTPUT));
    assert!(g.find("classifier").is_none());
    let bare = build_graph_with(
        &custom(),
        (64, 64),
        BuildOptions {
            classifier: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        bare.output(outputs::LOGITS),
        bare.output(outputs::POOLER_OUTPUT)
    );
}

#[test]
fn other_channel_patch_and_stage_counts() {
    let c = ConvNextV2Config::from_json(
        r#"{"num_channels": 1, "patch_size": 2, "num_stages": 3,
            "hidden_sizes": [8, 16, 24], "depths": [1, 1, 2], "num_labels": 4}"#,
    )
    .unwrap();
    let g = build_graph(&c, (30, 34)).unwrap();
    verify::verify(&g).unwrap();
    assert_eq!(g.input_type().channels, 1);
    assert_eq!(g.outputs().len(), 3 + 4);
    let t = g.node(g.output(outputs::LAST_HIDDEN_STATE).unwrap()).ty;
    assert_eq!((t.channels, t.height, t.width), (24, 3, 4));
}
