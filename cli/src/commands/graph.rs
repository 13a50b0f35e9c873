//! `cnx graph`: a model's graph, node by node, or its traffic statistics.

use super::{InputSize, PassFlags};
use crate::{Error, ModelSpec};
use cnx_compiler::{listing, verify};

/// Print a model's graph: one line per node (name, op, output, params, MACs) and totals.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Preset, config.json, or model directory.
    model: String,
    #[command(flatten)]
    input_size: InputSize,
    /// Print Graphviz dot instead of the table.
    #[arg(long)]
    dot: bool,
    /// Print activation traffic, node count and MACs of the unfused and the optimised graph.
    #[arg(long)]
    stats: bool,
    #[command(flatten)]
    passes: PassFlags,
}

impl Args {
    pub fn run(self) -> Result<(), Error> {
        let pipeline = self.passes.pipeline()?;
        if self.passes.list_requested() {
            for (i, pass) in pipeline.passes().enumerate() {
                println!("{:>2}. {:<30} {}", i + 1, pass.name(), pass.summary());
            }
            return Ok(());
        }
        let spec = ModelSpec::resolve(&self.model)?;
        let hw = self.input_size.hw(&spec)?;
        spec.check_run(1, hw)?;
        let unfused = cnx_compiler::build_graph(&spec.config, hw)?;
        verify::verify(&unfused)?;
        let mut graph = unfused.clone();
        pipeline.run(&mut graph)?;
        verify::verify(&graph)?;
        if self.stats {
            print!("{}", listing::traffic_table(&unfused, &graph));
        } else if self.dot {
            print!("{}", listing::dot(&graph));
        } else {
            print!("{}", listing::node_table(&unfused, &graph));
        }
        Ok(())
    }
}
