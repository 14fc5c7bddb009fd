//! `tandem review sign RUN_ID`: an auditor signs the after-action review of a finished run
//! (the `SignReview` call, the auditor role's one write). The coordinators record the
//! auditor's certificate as the signer; the evidence export shows who signed and when.

use crate::cmd::ops::{connect, Target};
use crate::cmd::status::{coordinator_addrs, runtime};
use anyhow::{anyhow, Result};
use clap::{Args as ClapArgs, Subcommand};
use tandem_core::proto::SignReviewRequest;

/// `tandem review ...`.
#[derive(Debug, Subcommand)]
pub enum ReviewCmd {
    /// Sign the review of a finished run (needs an auditor certificate: `--identity auditor`).
    Sign(SignArgs),
}

/// Arguments of `tandem review sign`.
#[derive(Debug, ClapArgs)]
pub struct SignArgs {
    /// The run reviewed (`tandem runs`).
    pub run_id: String,
    /// The reviewer's note.
    #[arg(long, default_value = "")]
    pub note: String,
    #[command(flatten)]
    pub target: Target,
}

/// Runs `tandem review ...`.
///
/// # Errors
/// No coordinator answers, or the call is refused (an operator certificate is).
pub fn run(cmd: ReviewCmd) -> Result<()> {
    let ReviewCmd::Sign(a) = cmd;
    let addrs = coordinator_addrs(a.target.config.as_ref(), &a.target.addr)?;
    let req = SignReviewRequest {
        run_id: a.run_id,
        note: a.note,
    };
    let r = runtime()?.block_on(async {
        let mut c = connect(&addrs).await?;
        c.sign_review(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| anyhow!("review sign: {}", s.message()))
    })?;
    println!(
        "review of run {} signed by {} (audit index {})",
        r.run_id, r.signed_by, r.index
    );
    Ok(())
}
