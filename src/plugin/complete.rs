//! `kubectl_complete-crane`: completes `kubectl crane ...` for kubectl's own shell
//! completion. For a plugin kubectl runs `kubectl_complete-<plugin>` from PATH with the
//! words after the plugin's name, the last one the word being completed (empty for a new
//! one), and reads back one candidate per line (`word<TAB>description`), then cobra's
//! directive `:N` (kubectl's pkg/cmd/plugin/plugin_completion.go).
//!
//! Verbs, flags and their fixed values come from the command line's clap definition; the
//! names of CraneReplicaSets and namespaces from the cluster, and contexts from the
//! kubeconfig, as `kubectl get crs <TAB>` completes them.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Arg, Command};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};

use super::{Target, command, connect};
use crate::api::CraneReplicaSet;

/// cobra's ShellCompDirectiveDefault: the shell may complete file names.
const FILES: u8 = 0;
/// cobra's ShellCompDirectiveNoFileComp: only the candidates given.
const NO_FILES: u8 = 4;

/// Verbs whose NAME is an existing CraneReplicaSet (run's is a new one).
const OBJECT_VERBS: [&str; 3] = ["get", "why", "restart"];

/// How long completion waits for the cluster: a TAB must not hang.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// What the word being completed may be.
#[derive(Debug, PartialEq, Eq)]
enum Want {
    /// These, each with a description, already filtered by what was typed.
    Words(Vec<(String, String)>),
    /// Names of the CraneReplicaSets in the namespace the words choose.
    Objects,
    Namespaces,
    /// Contexts of the kubeconfig.
    Contexts,
    /// The shell's own completion of file names.
    Files,
    Nothing,
}

/// Prints the completions of `argv` (its first item the executable) in kubectl's plugin
/// completion protocol. Failures print no candidate: a completion never shows an error.
pub async fn complete(argv: Vec<OsString>) -> ExitCode {
    let words: Vec<String> = argv
        .iter()
        .skip(1)
        .map(|w| w.to_string_lossy().into_owned())
        .collect();
    let current = words.last().cloned().unwrap_or_default();
    let (candidates, directive) = match wanted(&command(), &words) {
        Want::Words(words) => (words, NO_FILES),
        Want::Files => (Vec::new(), FILES),
        Want::Nothing => (Vec::new(), NO_FILES),
        Want::Contexts => (contexts(&target_of(&words)), NO_FILES),
        lookup => {
            let names = tokio::time::timeout(LOOKUP_TIMEOUT, names(&lookup, &target_of(&words)))
                .await
                .ok()
                .flatten()
                .unwrap_or_default();
            (names, NO_FILES)
        }
    };
    for (word, description) in candidates
        .iter()
        .filter(|(word, _)| word.starts_with(&current))
    {
        if description.is_empty() {
            println!("{word}");
        } else {
            println!("{word}\t{description}");
        }
    }
    println!(":{directive}");
    ExitCode::SUCCESS
}

/// What the last of `words` may be, from the ones before it.
fn wanted(top: &Command, words: &[String]) -> Want {
    let mut top = top.clone();
    top.build();
    let (current, done) = match words.split_last() {
        Some((current, done)) => (current.as_str(), done),
        None => ("", &[][..]),
    };
    let mut command = &top;
    let mut verb: Option<&Command> = None;
    let mut positionals = 0;
    let mut value_of: Option<&Arg> = None;
    for word in done {
        if value_of.take().is_some() {
            continue;
        }
        if let Some(flag) = word.strip_prefix('-').filter(|f| !f.is_empty()) {
            value_of = flag_awaiting_value(command, flag);
            continue;
        }
        match verb {
            None => match top.find_subcommand(word) {
                Some(found) => {
                    verb = Some(found);
                    command = found;
                }
                None => return Want::Nothing,
            },
            Some(_) => positionals += 1,
        }
    }
    if let Some(arg) = value_of {
        return values(arg);
    }
    if current.starts_with('-') {
        return Want::Words(
            command
                .get_arguments()
                .filter(|a| !a.is_hide_set() && !a.is_positional())
                .filter_map(|a| Some((format!("--{}", a.get_long()?), describe(a.get_help()))))
                .filter(|(flag, _)| flag.starts_with(current))
                .collect(),
        );
    }
    let Some(verb) = verb else {
        return Want::Words(
            top.get_subcommands()
                .filter(|c| !c.is_hide_set())
                .map(|c| (c.get_name().to_string(), describe(c.get_about())))
                .filter(|(name, _)| name.starts_with(current))
                .collect(),
        );
    };
    let Some(arg) = verb.get_positionals().nth(positionals) else {
        return Want::Nothing;
    };
    if OBJECT_VERBS.contains(&verb.get_name()) && arg.get_id() == "name" {
        return Want::Objects;
    }
    values(arg)
}

/// The flag `flag` (a word after its first `-`) when the next word is its value.
fn flag_awaiting_value<'a>(command: &'a Command, flag: &str) -> Option<&'a Arg> {
    let arg = match flag.strip_prefix('-') {
        // --name=value carries its value; --name may await it.
        Some(long) if !long.contains('=') => {
            command.get_arguments().find(|a| a.get_long() == Some(long))
        }
        Some(_) => None,
        // -n awaits its value; -nVALUE carries it.
        None if flag.chars().count() == 1 => {
            let short = flag.chars().next()?;
            command
                .get_arguments()
                .find(|a| a.get_short() == Some(short))
        }
        None => None,
    }?;
    (arg.get_action().takes_values() && !arg.is_require_equals_set()).then_some(arg)
}

/// What a value of `arg` may be.
fn values(arg: &Arg) -> Want {
    let fixed = arg.get_possible_values();
    if !fixed.is_empty() {
        return Want::Words(
            fixed
                .iter()
                .filter(|v| !v.is_hide_set())
                .map(|v| (v.get_name().to_string(), describe(v.get_help())))
                .collect(),
        );
    }
    match (arg.get_id().as_str(), arg.get_value_hint()) {
        ("namespace", _) => Want::Namespaces,
        ("context", _) => Want::Contexts,
        (_, clap::ValueHint::FilePath | clap::ValueHint::AnyPath) => Want::Files,
        _ => Want::Nothing,
    }
}

/// The first sentence of a help text, as a candidate's description.
fn describe(help: Option<&clap::builder::StyledStr>) -> String {
    let help = help.map(ToString::to_string).unwrap_or_default();
    let line = help.lines().next().unwrap_or_default();
    line.split(". ")
        .next()
        .unwrap_or_default()
        .trim_end_matches('.')
        .to_string()
}

/// The cluster, namespace and context the words name, as the verb will read them.
fn target_of(words: &[String]) -> Target {
    let value = |long: &str, short: Option<char>| {
        let mut found = None;
        for (i, word) in words.iter().enumerate() {
            let next = || words.get(i + 1).cloned();
            if let Some(rest) = word.strip_prefix("--").and_then(|w| w.strip_prefix(long)) {
                match rest.strip_prefix('=') {
                    Some(value) => found = Some(value.to_string()),
                    None if rest.is_empty() => found = next(),
                    None => {}
                }
            } else if let Some(rest) = short.and_then(|s| word.strip_prefix(&format!("-{s}"))) {
                found = if rest.is_empty() {
                    next()
                } else {
                    Some(rest.to_string())
                };
            }
        }
        found
    };
    Target {
        namespace: value("namespace", Some('n')),
        cluster: crate::cli::ClusterArgs {
            kubeconfig: value("kubeconfig", None).map(Into::into),
            context: value("context", None),
        },
    }
}

/// The names `want` asks for, from the cluster, by name; None when it cannot be asked.
async fn names(want: &Want, target: &Target) -> Option<Vec<(String, String)>> {
    let (client, namespace) = connect(target).await.ok()?;
    let mut names = match want {
        Want::Objects => names_of(Api::<CraneReplicaSet>::namespaced(client, &namespace)).await?,
        Want::Namespaces => names_of(Api::<Namespace>::all(client)).await?,
        _ => return None,
    };
    names.sort();
    Some(names.into_iter().map(|n| (n, String::new())).collect())
}

/// The names of the objects `api` lists (their metadata only: one whose body does not
/// decode is still named).
async fn names_of<K>(api: Api<K>) -> Option<Vec<String>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let listed = api.list_metadata(&ListParams::default()).await.ok()?;
    Some(
        listed
            .items
            .into_iter()
            .filter_map(|o| o.metadata.name)
            .collect(),
    )
}

/// The contexts of the kubeconfig the words (or KUBECONFIG) choose.
fn contexts(target: &Target) -> Vec<(String, String)> {
    let config = match &target.cluster.kubeconfig {
        Some(path) => kube::config::Kubeconfig::read_from(path),
        None => kube::config::Kubeconfig::read(),
    };
    config
        .map(|c| {
            c.contexts
                .into_iter()
                .map(|c| (c.name, String::new()))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(words: &[&str]) -> Want {
        let words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        wanted(&command(), &words)
    }

    fn words(want: Want) -> Vec<String> {
        match want {
            Want::Words(words) => words.into_iter().map(|(w, _)| w).collect(),
            other => panic!("not words: {other:?}"),
        }
    }

    #[test]
    fn the_first_word_is_a_verb_with_its_description() {
        let Want::Words(verbs) = want(&[""]) else {
            panic!("verbs")
        };
        let names: Vec<&str> = verbs.iter().map(|(w, _)| w.as_str()).collect();
        assert_eq!(
            names,
            [
                "run",
                "get",
                "why",
                "restart",
                "dashboard",
                "completion",
                "help"
            ]
        );
        let (_, about) = &verbs[3];
        assert!(about.starts_with("Replace every pod"), "{about}");
        assert_eq!(words(want(&["re"])), ["restart"]);
        assert_eq!(want(&["frobnicate", ""]), Want::Nothing);
    }

    #[test]
    fn an_existing_objects_name_comes_from_the_cluster_a_new_ones_from_nobody() {
        for verb in OBJECT_VERBS {
            assert_eq!(want(&[verb, ""]), Want::Objects, "{verb}");
            assert_eq!(want(&[verb, "-n", "demo", "cr"]), Want::Objects, "{verb}");
        }
        assert_eq!(want(&["why", "crane", ""]), Want::Nothing, "one name only");
        assert_eq!(want(&["run", ""]), Want::Nothing);
    }

    #[test]
    fn flags_and_their_values_complete_from_the_definition() {
        let flags = words(want(&["run", "crane", "--"]));
        for flag in [
            "--image",
            "--port",
            "--replicas",
            "--dry-run",
            "--output",
            "--namespace",
        ] {
            assert!(flags.contains(&flag.to_string()), "{flag} in {flags:?}");
        }
        assert_eq!(words(want(&["run", "crane", "--re"])), ["--replicas"]);
        assert_eq!(
            words(want(&["run", "crane", "-o", ""])),
            ["yaml", "json", "name"]
        );
        assert_eq!(words(want(&["completion", ""])), ["bash", "zsh", "fish"]);
        assert_eq!(want(&["get", "-n", ""]), Want::Namespaces);
        assert_eq!(want(&["get", "--namespace", "d"]), Want::Namespaces);
        assert_eq!(want(&["why", "--context", ""]), Want::Contexts);
        assert_eq!(want(&["get", "--kubeconfig", ""]), Want::Files);
        assert_eq!(want(&["run", "crane", "--image", ""]), Want::Nothing);
        // Values given with = or attached take no next word.
        assert_eq!(want(&["restart", "--namespace=demo", ""]), Want::Objects);
        assert_eq!(want(&["restart", "-ndemo", ""]), Want::Objects);
        // --dry-run's value needs its =: the next word is not one.
        assert_eq!(want(&["run", "--dry-run", ""]), Want::Nothing);
    }

    #[test]
    fn the_namespace_and_cluster_of_a_lookup_are_the_words_flags() {
        let target = |ws: &[&str]| target_of(&ws.iter().map(|w| w.to_string()).collect::<Vec<_>>());
        assert_eq!(
            target(&["why", "-n", "demo", ""]).namespace.as_deref(),
            Some("demo")
        );
        assert_eq!(
            target(&["why", "-ndemo", ""]).namespace.as_deref(),
            Some("demo")
        );
        assert_eq!(
            target(&["why", "--namespace=demo", ""])
                .namespace
                .as_deref(),
            Some("demo")
        );
        let t = target(&["get", "--context", "kind", "--kubeconfig", "/k", ""]);
        assert_eq!(t.cluster.context.as_deref(), Some("kind"));
        assert_eq!(t.cluster.kubeconfig, Some("/k".into()));
        assert_eq!(target(&["get", "-n"]).namespace, None, "still being typed");
        assert_eq!(target(&["get", ""]).namespace, None);
    }
}
