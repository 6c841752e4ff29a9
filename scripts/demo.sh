#!/usr/bin/env bash
# The wordcount demo (`make demo`): reset the app, produce a sample text, count it exactly-once
# with state in PostgreSQL, and print the ten most frequent words from the table.
set -euo pipefail
cd "$(dirname "$0")/.."
FLOWS=.venv/bin/flows
TEXT=${1:-examples/wordcount/sample.txt}

$FLOWS reset wordcount --yes
$FLOWS produce word-count-input --file "$TEXT"
$FLOWS run wordcount --until-idle 5
echo
echo "Top 10 words in word_counts:"
.venv/bin/python - <<'PY'
import os
import sqlalchemy as sa
from runtimes.config import Settings
settings = Settings.from_sources()
engine = sa.create_engine(settings.sqlalchemy_url())
with engine.connect() as connection:
    rows = connection.execute(sa.text(
        "SELECT word, count FROM word_counts ORDER BY count DESC, word LIMIT 10")).all()
for word, count in rows:
    print(f"  {count:>6}  {word}")
engine.dispose()
PY
