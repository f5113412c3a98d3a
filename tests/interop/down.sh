#!/usr/bin/env bash
# Stops everything tests/interop/up.sh started (OIDC server, Dovecot, Postfix,
# smtp-sink). Only processes recorded by up.sh are signalled.
#   down.sh          stop, keep $STATE (logs, mail, certificates)
#   down.sh --purge  stop and delete $STATE
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

purge=0
case "${1:-}" in
  "") ;;
  --purge) purge=1 ;;
  *)
    echo "usage: $0 [--purge]" >&2
    exit 2
    ;;
esac

stop_all

if ((purge)); then
  # Refuse obviously dangerous values of MISSIVE_INTEROP_DIR.
  case "$STATE" in
    "" | / | /tmp | /root | /home | /var | /usr | /etc)
      echo "down.sh: refusing to delete $STATE" >&2
      exit 1
      ;;
  esac
  log "removing $STATE"
  rm -rf -- "$STATE"
fi
log "stopped"
