"""PostgreSQL keyword search: per-user term counts, so rare words weigh more and searches stay small.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 00:00:00

PostgreSQL: ``memory_terms (user_key, term, memories)`` holds, for each user, how many of their
current memories (not superseded) contain each lexeme of ``memories.text_search``; the row with
the empty term counts the current memories themselves. Three statement-level triggers on
``memories`` keep it in step in the writer's own transaction (an insert adds the new rows'
lexemes, a delete takes the old rows' away, an update that changes a row's owner, text or
superseded state moves its lexemes; rows reaching zero are deleted, so a forgotten user leaves no
words behind). Deltas are applied in (user_key, term) order, so concurrent writers take the rows'
locks in one order. The keyword search reads these counts for the query's words (one index
lookup each): the inverse document frequency of BM25 and the size of each word's match list
before any memory is read. Existing memories are counted here, once.

The GIN index on ``text_search`` loses its pending list (``fastupdate = off``): with it, every
search read the whole list of entries not yet merged (up to 4 MB, 10-20 ms per search measured at
100k memories) until a vacuum merged them.

SQLite: nothing changes; FTS5 keeps its own statistics.

A later migration that changes how ``text_search`` is computed must recount ``memory_terms``
(the ``INSERT ... SELECT`` below), since a rewritten column fires no trigger.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Applies +1/-1 per (owner, text_search) to the counts of its lexemes and of the empty term.
_APPLY = """
CREATE FUNCTION memory_terms_apply(owners text[], vectors tsvector[], signs integer[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    emptied_owners text[];
    emptied_terms text[];
BEGIN
    WITH deltas AS (
        SELECT c.owner, t.term, sum(c.sign)::integer AS delta
        FROM unnest(owners, vectors, signs) AS c(owner, vector, sign),
             unnest(tsvector_to_array(c.vector) || '{""}'::text[]) AS t(term)
        GROUP BY c.owner, t.term
        HAVING sum(c.sign) <> 0
    ), applied AS (
        INSERT INTO memory_terms AS m (user_key, term, memories)
        SELECT owner, term, delta FROM deltas ORDER BY owner, term
        ON CONFLICT (user_key, term) DO UPDATE SET memories = m.memories + excluded.memories
        RETURNING m.user_key, m.term, m.memories
    )
    SELECT array_agg(user_key), array_agg(term) INTO emptied_owners, emptied_terms
    FROM applied WHERE memories <= 0;
    IF emptied_owners IS NOT NULL THEN
        DELETE FROM memory_terms AS m
        USING unnest(emptied_owners, emptied_terms) AS e(owner, term)
        WHERE m.user_key = e.owner AND m.term = e.term AND m.memories <= 0;
    END IF;
END $$
"""

# One function for the three triggers; each branch reads only the transition tables it has.
_COUNT = """
CREATE FUNCTION memory_terms_count() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    owners text[];
    vectors tsvector[];
    signs integer[];
BEGIN
    IF TG_OP = 'INSERT' THEN  -- the common case, in one statement: counts only grow
        INSERT INTO memory_terms AS m (user_key, term, memories)
        SELECT n.user_key, t.term, count(*)
        FROM new_rows AS n, unnest(tsvector_to_array(n.text_search) || '{""}'::text[]) AS t(term)
        WHERE n.superseded_by IS NULL
        GROUP BY n.user_key, t.term ORDER BY n.user_key, t.term
        ON CONFLICT (user_key, term) DO UPDATE SET memories = m.memories + excluded.memories;
        RETURN NULL;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(user_key), array_agg(text_search), array_agg(-1)
        INTO owners, vectors, signs
        FROM old_rows WHERE superseded_by IS NULL;
    ELSE
        WITH changed AS (
            SELECT o.user_key AS old_owner, o.text_search AS old_vector,
                   o.superseded_by IS NULL AS old_current,
                   n.user_key AS new_owner, n.text_search AS new_vector,
                   n.superseded_by IS NULL AS new_current
            FROM old_rows AS o JOIN new_rows AS n USING (seq)
            WHERE (o.user_key, o.text_search, o.superseded_by IS NULL)
                IS DISTINCT FROM (n.user_key, n.text_search, n.superseded_by IS NULL)
        ), sides AS (
            SELECT old_owner AS owner, old_vector AS vector, -1 AS sign FROM changed WHERE old_current
            UNION ALL
            SELECT new_owner, new_vector, 1 FROM changed WHERE new_current
        )
        SELECT array_agg(owner), array_agg(vector), array_agg(sign) INTO owners, vectors, signs
        FROM sides;
    END IF;
    IF owners IS NOT NULL THEN
        PERFORM memory_terms_apply(owners, vectors, signs);
    END IF;
    RETURN NULL;
END $$
"""

_TRIGGERS = {
    "memory_terms_insert": "AFTER INSERT ON memories REFERENCING NEW TABLE AS new_rows",
    "memory_terms_update": "AFTER UPDATE ON memories REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
    "memory_terms_delete": "AFTER DELETE ON memories REFERENCING OLD TABLE AS old_rows",
}

RECOUNT = """
INSERT INTO memory_terms (user_key, term, memories)
SELECT m.user_key, t.term, count(*)
FROM memories AS m, unnest(tsvector_to_array(m.text_search) || '{""}'::text[]) AS t(term)
WHERE m.superseded_by IS NULL
GROUP BY m.user_key, t.term
"""


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    # "C" collation: byte comparisons in the primary key; the terms are never sorted for display.
    op.execute(
        'CREATE TABLE memory_terms (user_key text COLLATE "C" NOT NULL, term text COLLATE "C" NOT NULL, '
        "memories integer NOT NULL, CONSTRAINT pk_memory_terms PRIMARY KEY (user_key, term)) "
        "WITH (fillfactor = 70)"  # room for in-page updates of the counts
    )
    op.execute(_APPLY)
    op.execute(_COUNT)
    for name, when in _TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {when} FOR EACH STATEMENT EXECUTE FUNCTION memory_terms_count()")
    op.execute(RECOUNT)
    op.execute("ALTER INDEX ix_memories_text_search SET (fastupdate = off)")
    op.execute("SELECT gin_clean_pending_list('ix_memories_text_search'::regclass)")


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute("ALTER INDEX ix_memories_text_search RESET (fastupdate)")
    for name in _TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON memories")
    op.execute("DROP FUNCTION IF EXISTS memory_terms_count()")
    op.execute("DROP FUNCTION IF EXISTS memory_terms_apply(text[], tsvector[], integer[])")
    op.execute("DROP TABLE IF EXISTS memory_terms")
