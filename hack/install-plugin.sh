#!/usr/bin/env bash
# Usage: hack/install-plugin.sh [PREFIX]
# `make install-plugin`: builds crane-operator and installs it as the kubectl plugin
# kubectl-crane in PREFIX/bin (default: $PREFIX, else ~/.local), with
# kubectl_complete-crane beside it, a symlink that kubectl (1.26 and later) runs to
# complete `kubectl crane ...`. A release build unless CARGO_PROFILE says otherwise
# (CARGO_PROFILE=dev: a debug build, quicker). Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

prefix=${1:-${PREFIX:-$HOME/.local}}
profile=${CARGO_PROFILE:-release}
case $profile in
  dev) built=debug ;;
  *) built=$profile ;;
esac
bin=$prefix/bin

cargo build --locked --profile "$profile" --bin crane-operator
mkdir -p "$bin"
# A new file moved over the old one: a kubectl crane still running keeps its binary.
install -m 0755 "${CARGO_TARGET_DIR:-target}/$built/crane-operator" "$bin/.kubectl-crane.new"
mv -f "$bin/.kubectl-crane.new" "$bin/kubectl-crane"
ln -sfn kubectl-crane "$bin/kubectl_complete-crane"

echo "[install-plugin] $bin/kubectl-crane ($("$bin/kubectl-crane" --version)) and $bin/kubectl_complete-crane"
case ":$PATH:" in
  *":$bin:"*) ;;
  *) echo "[install-plugin] $bin is not on PATH: add it (export PATH=\"$bin:\$PATH\") for kubectl to find kubectl crane" ;;
esac
echo "[install-plugin] kubectl crane <TAB> completes through kubectl's own completion (source <(kubectl completion bash));"
echo "[install-plugin] the kubectl-crane command itself: source <(kubectl-crane completion bash) (or zsh, fish)"
