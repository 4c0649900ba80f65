//! What the binary's commands share, as `crane-operator` and as the kubectl plugin
//! `kubectl-crane`: the cluster they talk to (chosen as kubectl chooses it), the signals
//! that stop them, and their shell completion scripts.

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

/// Which cluster, as kubectl chooses it.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ClusterArgs {
    /// The kubeconfig file (default: KUBECONFIG, ~/.kube/config, or the in-cluster
    /// configuration, as kubectl).
    #[arg(long, env = "CRANE_KUBECONFIG", value_hint = clap::ValueHint::FilePath)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, env = "CRANE_CONTEXT")]
    pub context: Option<String>,
}

/// The cluster to talk to: `--kubeconfig`/`--context` when given, else kubectl's rules
/// (KUBECONFIG, ~/.kube/config, then the in-cluster configuration).
pub async fn kube_config(args: &ClusterArgs) -> anyhow::Result<kube::Config> {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    match (&args.kubeconfig, &args.context) {
        (Some(path), _) => {
            let file = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .with_context(|| format!("the kubeconfig {} is not usable", path.display()))
        }
        (None, Some(context)) => kube::Config::from_kubeconfig(&options)
            .await
            .with_context(|| format!("no usable kubeconfig context {context}")),
        (None, None) => kube::Config::infer()
            .await
            .context("no Kubernetes configuration: set KUBECONFIG, or run inside a cluster"),
    }
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn termination() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing reconciles in flight, then exiting"),
        _ = int.recv() => tracing::info!("SIGINT: finishing reconciles in flight, then exiting"),
    }
}

/// The shells `completion` writes a script for.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// The completion script of `command` for `shell`, registered for the executable
/// `bin_name` (a single word: the shells complete commands by their first word).
pub fn completion_script(shell: Shell, mut command: clap::Command, bin_name: &str) -> String {
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(generator, &mut command, bin_name, &mut script);
    let script = String::from_utf8_lossy(&script).into_owned();
    match shell {
        // clap_complete's bash script spells the state of a hyphenated executable's
        // subcommands two ways, so nothing after a subcommand completes
        // (clap-rs/clap#6421): its case arms get the loop's spelling.
        Shell::Bash => script.replace(
            &bin_name.replace('-', "__subcmd__"),
            &bin_name.replace('-', "__"),
        ),
        Shell::Zsh | Shell::Fish => script,
    }
}

/// What bash completes for `line` (its last word being completed, a new one after a
/// trailing space) with the completion `script` loaded, as a TAB would.
#[cfg(test)]
pub(crate) fn bash_completions(script: &str, line: &str) -> Vec<String> {
    let driver = format!(
        r#"{script}
line='{line}'
read -ra COMP_WORDS <<< "$line"
[[ "$line" == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_LINE="$line"; COMP_POINT=${{#line}}
function=$(complete -p "${{COMP_WORDS[0]}}" | sed -n 's/.*-F \([^ ]*\) .*/\1/p')
"$function" "${{COMP_WORDS[0]}}" "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s
' "${{COMPREPLY[@]}}"
"#
    );
    let out = std::process::Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &driver])
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "bash: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hyphenated executable with a subcommand that takes a shell.
    fn my_tool() -> clap::Command {
        clap::Command::new("my-tool").subcommand(clap::Command::new("completion").arg(
            clap::Arg::new("shell").value_parser(clap::builder::EnumValueParser::<Shell>::new()),
        ))
    }

    #[test]
    fn bash_completes_past_a_hyphenated_executables_subcommand() {
        let script = completion_script(Shell::Bash, my_tool(), "my-tool");
        assert_eq!(bash_completions(&script, "my-tool comp"), ["completion"]);
        assert_eq!(
            bash_completions(&script, "my-tool completion "),
            ["-h", "--help", "bash", "zsh", "fish"]
        );
    }

    #[test]
    fn every_shells_script_registers_the_executable_named() {
        for (shell, registration) in [
            (Shell::Bash, "-o default my-tool\n"),
            (Shell::Zsh, "#compdef my-tool\n"),
            (Shell::Fish, "complete -c my-tool "),
        ] {
            let script = completion_script(shell, my_tool(), "my-tool");
            assert!(script.contains(registration), "{shell:?}:\n{script}");
        }
    }
}
