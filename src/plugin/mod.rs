//! `kubectl crane`: the kubectl plugin, which is this binary installed as `kubectl-crane`
//! (kubectl runs `kubectl-<name>` from PATH for `kubectl <name>`), with its completion
//! helper `kubectl_complete-crane` (kubectl runs it to complete `kubectl crane ...`).
//!
//! `run` is the book's `kubectl run --generator=run/v1` making a CraneReplicaSet where it
//! made a ReplicationController; `get` and `why` say how the objects are doing and why
//! their pods are not ready; `restart` and `dashboard` are the dashboard's own code.

mod complete;
mod get;
mod run;
mod why;

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use crate::api::CraneReplicaSet;
use crate::cli::{ClusterArgs, Shell, completion_script, kube_config};
use crate::dashboard::launch::DashboardArgs;
use crate::decode::Decoded;
use crate::service::OWNER_LABEL;

pub use complete::complete;
pub use run::{DryRun, Output, RunArgs};

/// The executable kubectl runs for `kubectl crane` (krew's naming).
pub const PLUGIN_EXECUTABLE: &str = "kubectl-crane";
/// The executable kubectl runs to complete `kubectl crane ...` (kubectl 1.26 and later).
pub const COMPLETION_EXECUTABLE: &str = "kubectl_complete-crane";

/// How the binary was started, from the name it was started by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invocation {
    Operator,
    Plugin,
    Completion,
}

impl Invocation {
    /// From the file name of `argv[0]` (a symlink's own name).
    pub fn of(argv0: Option<&std::ffi::OsStr>) -> Self {
        let name = argv0
            .map(std::path::Path::new)
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned());
        match name.as_deref() {
            Some(PLUGIN_EXECUTABLE) => Self::Plugin,
            Some(COMPLETION_EXECUTABLE) => Self::Completion,
            _ => Self::Operator,
        }
    }
}

/// The kubectl plugin's command line.
#[derive(Parser, Debug)]
#[command(
    name = "kubectl crane",
    bin_name = "kubectl crane",
    version = crate::VERSION,
    arg_required_else_help = true,
    about = "CraneReplicaSets from kubectl: the ReplicationController of Kubernetes in Action, with its LoadBalancer Service"
)]
pub struct Plugin {
    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Create a CraneReplicaSet that runs IMAGE (the book's `kubectl run --generator=run/v1`):
    /// labels app=NAME, one container NAME, and with --port its LoadBalancer Service.
    Run(RunArgs),
    /// Show CraneReplicaSets: a table of all of them, or one in detail with its pods.
    Get(GetArgs),
    /// Say which pods of a CraneReplicaSet are not ready, why, and what to do about it.
    Why(NameArgs),
    /// Replace every pod of a RollingUpdate CraneReplicaSet, a few at a time (as `kubectl
    /// rollout restart`).
    Restart(NameArgs),
    /// Serve a live web view of CraneReplicaSets on 127.0.0.1, with your kubeconfig's rights.
    Dashboard(DashboardArgs),
    /// Print the shell completion script of the kubectl-crane command; `kubectl crane`
    /// itself completes through kubectl_complete-crane (`make install-plugin`).
    Completion {
        #[arg(value_enum)]
        shell: Shell,
    },
}

/// Where a verb acts: a namespace of a cluster, as kubectl's flags choose them.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Target {
    /// The namespace (default: the kubeconfig context's, else `default`).
    #[arg(short, long)]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// One CraneReplicaSet, shown in detail with its pods.
    pub name: Option<String>,
    /// List the CraneReplicaSets of every namespace.
    #[arg(short = 'A', long, conflicts_with_all = ["name", "namespace"])]
    pub all_namespaces: bool,
    #[command(flatten)]
    pub target: Target,
}

#[derive(clap::Args, Debug)]
pub struct NameArgs {
    /// The CraneReplicaSet.
    pub name: String,
    #[command(flatten)]
    pub target: Target,
}

/// The plugin's command line as clap describes it: usage and errors say `kubectl crane`.
pub fn command() -> clap::Command {
    Plugin::command()
}

/// Runs `kubectl crane` with `argv` (its first item the executable); errors are printed as
/// kubectl prints them.
pub async fn main(argv: Vec<OsString>) -> ExitCode {
    let plugin = match command()
        .try_get_matches_from(argv)
        .and_then(|m| Plugin::from_arg_matches(&m))
    {
        Ok(plugin) => plugin,
        Err(e) => e.exit(),
    };
    match execute(plugin.verb).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", kubectl_error(&e));
            ExitCode::FAILURE
        }
    }
}

async fn execute(verb: Verb) -> anyhow::Result<()> {
    match verb {
        // Sends nothing, so needs no cluster.
        Verb::Run(args) if args.dry_run == DryRun::Client => {
            print!("{}", run::client_dry_run(&args)?)
        }
        Verb::Run(args) => {
            let (client, namespace) = connect(&args.target).await?;
            print!("{}", run::create(&client, &namespace, &args).await?);
        }
        Verb::Get(args) => {
            let (client, namespace) = connect(&args.target).await?;
            let namespace = (!args.all_namespaces).then_some(namespace);
            print!(
                "{}",
                get::get(&client, namespace.as_deref(), args.name.as_deref()).await?
            );
        }
        Verb::Why(args) => {
            let (client, namespace) = connect(&args.target).await?;
            let (crs, pods) = object_and_pods(&client, &namespace, &args.name).await?;
            print!("{}", why::explain(&crs, &pods));
        }
        Verb::Restart(args) => {
            let (client, namespace) = connect(&args.target).await?;
            let api: Api<CraneReplicaSet> = Api::namespaced(client, &namespace);
            crate::restart::restart(&api, &args.name).await?;
            println!("cranereplicaset.crane.dev/{} restarted", args.name);
        }
        Verb::Dashboard(args) => crate::dashboard::launch::launch(args).await?,
        Verb::Completion { shell } => print!("{}", completion_script_of_the_plugin(shell)),
    }
    Ok(())
}

/// The completion script of the `kubectl-crane` command. Named as the executable: the
/// shells name states and functions after the command, and a space would break zsh's.
fn completion_script_of_the_plugin(shell: Shell) -> String {
    let command = command()
        .name(PLUGIN_EXECUTABLE)
        .bin_name(PLUGIN_EXECUTABLE);
    completion_script(shell, command, PLUGIN_EXECUTABLE)
}

/// A client for `target`'s cluster, and its namespace.
async fn connect(target: &Target) -> anyhow::Result<(Client, String)> {
    let config = kube_config(&target.cluster).await?;
    let namespace = target
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = crate::client::build(config).context("could not set up the API client")?;
    Ok((client, namespace))
}

/// An error as kubectl prints it: `Error from server (Reason): message` for the API
/// server's refusals, `error: ...` for the rest.
fn kubectl_error(e: &anyhow::Error) -> String {
    // The API server's answer, wherever in the chain kube's error is (restart's error
    // forwards to its source, kube's boxed Status).
    let status = e
        .chain()
        .find_map(|c| match c.downcast_ref::<kube::Error>() {
            Some(kube::Error::Api(status)) => Some(status.as_ref()),
            _ => c
                .downcast_ref::<Box<kube::core::Status>>()
                .map(AsRef::as_ref),
        });
    match status {
        Some(status) if status.reason.is_empty() => {
            format!("Error from server: {}", status.message)
        }
        Some(status) => format!("Error from server ({}): {}", status.reason, status.message),
        None => format!("error: {e:#}"),
    }
}

/// The CraneReplicaSet `name` and the pods it controls, by name. One that does not decode
/// is an error that names its field.
async fn object_and_pods(
    client: &Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<(CraneReplicaSet, Vec<Pod>)> {
    let api: Api<Decoded<CraneReplicaSet>> = Api::namespaced(client.clone(), namespace);
    let crs = readable(api.get(name).await?)?;
    let pods: Api<Decoded<Pod>> = Api::namespaced(client.clone(), namespace);
    let listed = pods
        .list(&ListParams::default().labels(&format!("{OWNER_LABEL}={name}")))
        .await
        .with_context(|| format!("listing the pods of {name}"))?;
    let pods = controlled_pods(&crs, listed.items);
    Ok((crs, pods))
}

/// The pods of `pods` that `crs` controls (by its UID, as the controller counts them), by
/// name; a pod that does not decode in full stands in with what does.
fn controlled_pods(crs: &CraneReplicaSet, pods: Vec<Decoded<Pod>>) -> Vec<Pod> {
    let uid = crs.uid();
    let mut pods: Vec<Pod> = pods
        .into_iter()
        .filter_map(Decoded::readable)
        .filter(|p| {
            p.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
        })
        .collect();
    pods.sort_by_key(|p| p.name_any());
    pods
}

/// The CraneReplicaSet, or why it cannot be read and how to fix it.
fn readable(crs: Decoded<CraneReplicaSet>) -> anyhow::Result<CraneReplicaSet> {
    match crs {
        Decoded::Ok(crs) => Ok(crs),
        Decoded::Undecodable(bad) => {
            let name = bad.meta.name.clone().unwrap_or_default();
            anyhow::bail!(
                "CraneReplicaSet {name} cannot be read: {}: {}; fix it with `kubectl edit cranereplicaset {name}`",
                bad.field,
                bad.error
            )
        }
    }
}

/// Rows as kubectl prints a table: each column as wide as its widest cell, three spaces
/// apart, no trailing spaces.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < row.len() {
                let pad = widths[c] - cell.chars().count() + 3;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Verb, clap::Error> {
        let argv = std::iter::once("kubectl-crane").chain(args.iter().copied());
        command()
            .try_get_matches_from(argv)
            .and_then(|m| Plugin::from_arg_matches(&m))
            .map(|p| p.verb)
    }

    #[test]
    fn the_binary_knows_how_it_was_started_by_its_file_name() {
        let of = |p: &str| Invocation::of(Some(std::ffi::OsStr::new(p)));
        assert_eq!(of("/usr/local/bin/kubectl-crane"), Invocation::Plugin);
        assert_eq!(of("kubectl_complete-crane"), Invocation::Completion);
        assert_eq!(of("/usr/local/bin/crane-operator"), Invocation::Operator);
        assert_eq!(of("kubectl-crane-old"), Invocation::Operator);
        assert_eq!(Invocation::of(None), Invocation::Operator);
    }

    #[test]
    fn usage_and_errors_say_kubectl_crane() {
        let e = parse(&["restart"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let text = e.to_string();
        assert!(text.contains("kubectl crane restart <NAME>"), "{text}");
        let help = command().render_help().to_string();
        for verb in ["run", "get", "why", "restart", "dashboard", "completion"] {
            assert!(help.contains(&format!("  {verb} ")), "{verb} in:\n{help}");
        }
    }

    #[test]
    fn get_takes_a_name_or_all_namespaces_but_not_both() {
        let Verb::Get(args) = parse(&["get"]).unwrap() else {
            panic!("get")
        };
        assert!(args.name.is_none() && !args.all_namespaces && args.target.namespace.is_none());
        let Verb::Get(args) = parse(&["get", "crane", "-n", "demo"]).unwrap() else {
            panic!("get")
        };
        assert_eq!(args.name.as_deref(), Some("crane"));
        assert_eq!(args.target.namespace.as_deref(), Some("demo"));
        let Verb::Get(args) = parse(&["get", "-A"]).unwrap() else {
            panic!("get")
        };
        assert!(args.all_namespaces);
        for both in [&["get", "crane", "-A"][..], &["get", "-A", "-n", "demo"]] {
            assert_eq!(
                parse(both).unwrap_err().kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{both:?}"
            );
        }
    }

    #[test]
    fn why_and_restart_need_a_name_and_take_the_cluster_flags() {
        let Verb::Why(args) = parse(&["why", "crane", "--context", "kind", "-n", "demo"]).unwrap()
        else {
            panic!("why")
        };
        assert_eq!(args.name, "crane");
        assert_eq!(args.target.cluster.context.as_deref(), Some("kind"));
        assert!(matches!(
            parse(&["restart", "crane", "--namespace=demo"]),
            Ok(Verb::Restart(NameArgs { ref name, ref target })) if name == "crane" && target.namespace.as_deref() == Some("demo")
        ));
        assert!(parse(&["why"]).is_err());
    }

    #[test]
    fn the_completion_script_completes_kubectl_crane_and_leaves_kubectl_alone() {
        let script = completion_script_of_the_plugin(Shell::Bash);
        let complete = |line| crate::cli::bash_completions(&script, line);
        assert_eq!(complete("kubectl-crane re"), ["restart"]);
        assert_eq!(
            complete("kubectl-crane run crane -o "),
            ["yaml", "json", "name"]
        );
        assert!(
            script.contains("-o default kubectl-crane\n") && !script.contains(" kubectl\n"),
            "{script}"
        );
        let zsh = completion_script_of_the_plugin(Shell::Zsh);
        assert!(zsh.starts_with("#compdef kubectl-crane\n"), "{zsh}");
        assert!(
            !zsh.contains("->kubectl crane"),
            "a state with a space:\n{zsh}"
        );
    }

    #[test]
    fn api_errors_read_as_kubectls() {
        let status = |reason: &str, message: &str| {
            anyhow::Error::from(kube::Error::Api(Box::new(kube::core::Status {
                reason: reason.into(),
                message: message.into(),
                code: 409,
                ..kube::core::Status::default()
            })))
        };
        assert_eq!(
            kubectl_error(&status(
                "AlreadyExists",
                "cranereplicasets.crane.dev \"crane\" already exists"
            )),
            "Error from server (AlreadyExists): cranereplicasets.crane.dev \"crane\" already exists"
        );
        assert_eq!(
            kubectl_error(&status("", "boom").context("while creating")),
            "Error from server: boom"
        );
        let not_found = kube::core::Status {
            reason: "NotFound".into(),
            message: "cranereplicasets.crane.dev \"nope\" not found".into(),
            code: 404,
            ..kube::core::Status::default()
        };
        let restart = crate::restart::Error::Api(kube::Error::Api(Box::new(not_found)));
        assert_eq!(
            kubectl_error(&restart.into()),
            "Error from server (NotFound): cranereplicasets.crane.dev \"nope\" not found"
        );
        let refused = crate::restart::Error::Refused("crane has updateStrategy OnDelete".into());
        assert_eq!(
            kubectl_error(&refused.into()),
            "error: crane has updateStrategy OnDelete"
        );
        assert_eq!(
            kubectl_error(&anyhow::anyhow!("no such thing")),
            "error: no such thing"
        );
    }

    #[test]
    fn tables_align_their_columns_three_spaces_apart() {
        let rows = vec![
            vec!["NAME".into(), "READY".into(), "REASON".into()],
            vec!["crane".into(), "3".into(), String::new()],
            vec![
                "a-longer-name".into(),
                "0".into(),
                "ImagePullBackOff".into(),
            ],
        ];
        assert_eq!(
            table(&rows),
            "NAME            READY   REASON\n\
             crane           3\n\
             a-longer-name   0       ImagePullBackOff\n"
        );
    }
}
