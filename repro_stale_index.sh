#!/bin/bash
# A value (>=256 bytes) shared across logs becomes unreadable after killed compactions,
# although intact copies of it exist in several logs.
set -u
export PYTHONPATH=/tmp/rev10/src
P=/work/venv/bin/python
S=/tmp/rev10/maint/repro1
rm -rf $S
c() { $P -m castore --dir $S --dag d "$@"; }
BIG="{\"pad\":\"$(printf 'x%.0s' $(seq 300))\"}"
c set a "$BIG" >/dev/null
c set a '"small1"' >/dev/null
c set b "$BIG" >/dev/null          # b points at a's blob frame (cross-log dedup)
c compact --prefix a --keep-last 1 >/dev/null   # a's blob frame moves: b's hint is stale now
# gc holds gc.lock (stopped after its mark): writers cannot reference other logs, so
# c1..c4 store fresh copies of the value (each indexed); then gc dies (SIGKILL)
CASTORE_FAILPOINTS=gc-after-mark:stop $P -m castore --dir $S gc --grace 0 & GCPID=$!
sleep 1.5
for i in 1 2 3 4; do c set c$i "$BIG" >/dev/null; c set c$i '"s"' >/dev/null; done
kill -KILL $GCPID; wait $GCPID 2>/dev/null
echo "before killed compactions:"; c get b | cut -c1-120
# one compaction per c-key, each SIGKILLed after recording its new blob offsets, before its rename
for i in 1 2 3 4; do
  CASTORE_FAILPOINTS=rewrite-before-rename $P -m castore --dir $S compact --prefix c$i --keep-last 1 >/dev/null 2>&1
  echo "killed compaction of c$i: rc=$?"
done
echo "after:"; c get b; echo "rc=$?"
c get b --version 1; echo "rc=$?"
c check | cut -c1-600; echo
echo "copies of the value are intact in logs a, c1..c4:"; for k in a c1 c2 c3 c4; do c get $k --version 1 | cut -c1-90; done
