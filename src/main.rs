//! The `onnx-dynq` command line. It parses arguments, calls the library and prints results;
//! errors print on one line and exit non-zero.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

mod cli;

use cli::{fuse as fuse_cmd, rewrite as rewrite_cmd, run as cli_run, verify as cli_verify};

use onnx_dynq::passes::quantize::policy::{
    DEFAULT_MIN_INNER_DIM, DEFAULT_MIN_WEIGHT_ELEMENTS, LstmMode, OpKind, PolicyOptions,
};

#[derive(Parser)]
#[command(
    name = "onnx-dynq",
    version,
    about = "Dynamic int8 quantization of ONNX models, verified"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's interface, ops, weights and what the rewrite would quantize.
    Inspect(InspectArgs),
    /// Quantize a model's weights to int8 (activations quantized at run time).
    Rewrite(rewrite_cmd::RewriteArgs),
    /// Run the cleanup and fusion passes alone and save the result (no quantization).
    Fuse(fuse_cmd::FuseArgs),
    /// Run a model with the built-in runtime and summarize its outputs.
    Run(cli_run::RunArgs),
    /// Compare a quantized model with its float original in the built-in runtime.
    Verify(cli_verify::VerifyArgs),
}

#[derive(Args)]
struct PolicyArgs {
    /// Op families to quantize (comma-separated): MatMul,Gemm,LSTM,GRU,RNN,Gather,Conv,Attention,EmbedLayerNormalization.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "MatMul,Gemm,LSTM,GRU,RNN,Gather,Attention,EmbedLayerNormalization"
    )]
    ops: Vec<String>,
    /// Node names (as in the input model) to leave float.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    exclude: Vec<String>,
    /// Quantize only these node names.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    include: Option<Vec<String>>,
    /// Recurrent rewrite: ort (DynamicQuantizeLSTM), onnx (standard ops), weight-only.
    #[arg(long, value_enum, default_value = "ort")]
    lstm: LstmArg,
    /// Skip weights with fewer elements than this.
    #[arg(long, default_value_t = DEFAULT_MIN_WEIGHT_ELEMENTS)]
    min_weight_elements: usize,
    /// Skip MatMul/Gemm/Conv whose inner (reduction) dimension is below this.
    #[arg(long, default_value_t = DEFAULT_MIN_INNER_DIM)]
    min_inner_dim: usize,
    /// Leave nodes inside If/Loop/Scan bodies float.
    #[arg(long)]
    no_subgraphs: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LstmArg {
    Ort,
    Onnx,
    WeightOnly,
}

impl PolicyArgs {
    fn to_options(&self) -> Result<PolicyOptions> {
        let ops = self
            .ops
            .iter()
            .map(|s| {
                OpKind::parse(s.trim()).with_context(|| {
                    format!("unknown op '{s}' in --ops (choose from MatMul,Gemm,LSTM,GRU,RNN,Gather,Conv,Attention,EmbedLayerNormalization)")
                })
            })
            .collect::<Result<_>>()?;
        Ok(PolicyOptions {
            ops,
            exclude: self.exclude.iter().cloned().collect(),
            include: self.include.as_ref().map(|v| v.iter().cloned().collect()),
            lstm_mode: match self.lstm {
                LstmArg::Ort => LstmMode::Ort,
                LstmArg::Onnx => LstmMode::Onnx,
                LstmArg::WeightOnly => LstmMode::WeightOnly,
            },
            min_weight_elements: self.min_weight_elements,
            min_inner_dim: self.min_inner_dim,
            subgraphs: !self.no_subgraphs,
        })
    }
}

#[derive(Args)]
struct InspectArgs {
    model: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// How many initializers to list in text output.
    #[arg(long, default_value_t = 20)]
    top: usize,
    #[command(flatten)]
    policy: PolicyArgs,
}

fn inspect(args: &InspectArgs) -> Result<()> {
    let policy = args.policy.to_options()?;
    let model = onnx_dynq::load(&args.model)?;
    let report = onnx_dynq::inspect::inspect(&model, &policy);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text(args.top));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Run(_) | Command::Verify(_)) {
        onnx_dynq::runtime::alloc::keep_large_buffers();
    }
    let result = match &cli.command {
        Command::Inspect(a) => inspect(a),
        Command::Rewrite(a) => rewrite_cmd::run(a),
        Command::Fuse(a) => fuse_cmd::run(a),
        Command::Run(a) => cli_run::run(a),
        Command::Verify(a) => cli_verify::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of causes joined, never a backtrace.
            let msg = e
                .chain()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(": ");
            eprintln!("error: {}", msg.replace('\n', " "));
            ExitCode::from(2)
        }
    }
}
