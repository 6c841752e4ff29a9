"""The systems under test, one script (or flows app file, or Maven project) each.

Each runs in its own process, configured only by ``BENCH_*`` environment variables (see
:mod:`bench.commands`), so the peers can run in their own virtualenvs (or JVM: the Maven
project ``kafka_streams/``, built by :mod:`bench.jvm`): these files import nothing from
``bench``. ``durable.py`` is wordcount's ceiling with flows' guarantees. They share the
work they do, case by case:

* ``stateless-json``: JSON in, ``user`` upper-cased, JSON out, key kept;
* ``wordcount``: lines in, ``re.findall(r"[^\\W_]+", line.lower())``, one output per word
  occurrence (key the word, value its running count as a decimal string);
* ``materialise``: JSON rows upserted by ``id`` into a PostgreSQL table.
"""
