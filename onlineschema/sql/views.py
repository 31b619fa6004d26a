"""Views that use a changed column: stashed and recreated inside one short transaction.

PostgreSQL refuses ``ALTER COLUMN TYPE`` of a column a view selects, and after the
column copy's swap a view would still use the old column (which is then dropped). So the
transaction that changes the column first *stashes* every view that uses it, views on
those views included (definition from ``pg_get_viewdef``, owner, privileges, comments,
column defaults and options: ``security_barrier``, ``check_option``,
``security_invoker``) in a temporary table and drops them; after the change it
recreates them in dependency order. The definitions are read when the transaction runs,
not when the plan was made, so a view changed or created in between is handled.

The work is done by two PL/pgSQL functions created in ``pg_temp`` by the same
transaction (no ``DO`` block; nothing stays behind: the functions are dropped at its
end and the temporary table is ``ON COMMIT DROP``). A view that cannot be recreated
exactly (a materialized view, a rule or a trigger on a view) makes the stash raise
before anything is dropped, so the transaction changes nothing.

The catalog queries the planner uses to list these views in the plan (and to refuse
what cannot be recreated) are here too, so that the plan and the run agree.
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql

from .compose import qname, render

STASH_FUNCTION = "onlineschema_views_stash"
RESTORE_FUNCTION = "onlineschema_views_restore"
STASH_TABLE = "onlineschema_views_stashed"

#: The views over some columns, views on them included: (root table, column, relation,
#: rule name, depth). ``{roots}`` is a relation with the columns ``rel`` (a table oid)
#: and ``col`` (a column name). A relation reached by a rule other than a view's
#: ``_RETURN`` (a rule on a table) or that is not a plain view cannot be recreated.
CLOSURE = """
WITH RECURSIVE closure(tbl, col, rel, rulename, depth) AS (
  SELECT a.attrelid, a.attname, rw.ev_class, rw.rulename::text, 1
  FROM {roots}
  JOIN pg_attribute a ON a.attrelid = r.rel AND a.attname = r.col
  JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = a.attrelid
   AND d.refobjsubid = a.attnum AND d.classid = 'pg_rewrite'::regclass
  JOIN pg_rewrite rw ON rw.oid = d.objid
  WHERE rw.ev_class <> a.attrelid
  UNION
  SELECT c.tbl, c.col, rw.ev_class, rw.rulename::text, c.depth + 1
  FROM closure c
  JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = c.rel
   AND d.classid = 'pg_rewrite'::regclass
  JOIN pg_rewrite rw ON rw.oid = d.objid
  WHERE rw.ev_class <> c.rel
)
"""

#: For the relations of ``closure``: what stops recreating them exactly, as text.
BLOCKERS = """
SELECT c.tbl, c.col, x.what
FROM (SELECT DISTINCT tbl, col, rel, rulename FROM closure) c
JOIN pg_class v ON v.oid = c.rel
CROSS JOIN LATERAL (
  SELECT CASE
    WHEN v.relkind = 'm' THEN format('materialized view %s (recreating it needs a REFRESH,'
      ' which holds its lock for the whole query)', c.rel::regclass)
    WHEN c.rulename <> '_RETURN' THEN format('rule %I on %s', c.rulename, c.rel::regclass)
    WHEN v.relkind <> 'v' THEN format('%s (relkind %s)', c.rel::regclass, v.relkind)
  END AS what
  UNION ALL
  SELECT format('rule %I on view %s', rw.rulename, c.rel::regclass)
  FROM pg_rewrite rw WHERE rw.ev_class = c.rel AND rw.rulename <> '_RETURN'
    AND c.rulename = '_RETURN' AND v.relkind = 'v'
  UNION ALL
  SELECT format('view %s (owned by %I, a role that %I may not act as: it could not'
      ' recreate the view with its owner; run the migration as a member of that role)',
      c.rel::regclass, pg_get_userbyid(v.relowner), current_user)
  WHERE v.relkind = 'v' AND c.rulename = '_RETURN'
    AND NOT (pg_has_role(v.relowner, 'MEMBER') AND pg_has_role(v.relowner, 'USAGE'))
  UNION ALL
  SELECT format('trigger %I on view %s', t.tgname, c.rel::regclass)
  FROM pg_trigger t WHERE t.tgrelid = c.rel AND v.relkind = 'v'
  UNION ALL
  SELECT pg_describe_object(d.classid, d.objid, d.objsubid)
  FROM pg_depend d
  WHERE d.deptype = 'n' AND d.classid <> 'pg_rewrite'::regclass AND v.relkind = 'v'
    AND ((d.refclassid = 'pg_class'::regclass AND d.refobjid = c.rel)
         OR (d.refclassid = 'pg_type'::regclass AND d.refobjid = v.reltype))
) x
WHERE x.what IS NOT NULL
"""


_ROOTS = "(SELECT t::regclass::oid AS rel, c AS col FROM unnest(rels, cols) AS u(t, c)) r"

_PLAN_ROOTS = (
    "(SELECT a0.attrelid AS rel, a0.attname AS col FROM pg_attribute a0"
    " WHERE a0.attrelid = ANY(%(oids)s) AND a0.attnum > 0 AND NOT a0.attisdropped) r"
)

_STASH_BODY = """
DECLARE
  vw record;
  bad text;
BEGIN
  SELECT string_agg(DISTINCT what, '; ' ORDER BY what) INTO bad FROM (
{closure}{blockers}  ) b;
  IF bad IS NOT NULL THEN
    RAISE EXCEPTION USING ERRCODE = 'dependent_objects_still_exist',
      MESSAGE = 'cannot recreate what uses the changed column(s): ' || bad,
      HINT = 'drop those objects before the contract and create them again after it';
  END IF;
  CREATE TEMP TABLE {views} ON COMMIT DROP AS
{closure}
  SELECT v.oid, max(c.depth) AS depth, n.nspname AS schema, v.relname AS name,
         rtrim(pg_get_viewdef(v.oid), ';') AS def, v.relowner AS owner,
         v.relacl AS acl, v.reloptions AS options,
         obj_description(v.oid, 'pg_class') AS comment
  FROM closure c JOIN pg_class v ON v.oid = c.rel
  JOIN pg_namespace n ON n.oid = v.relnamespace
  GROUP BY v.oid, n.nspname;
  CREATE TEMP TABLE {columns} ON COMMIT DROP AS
  SELECT s.oid, a.attnum, a.attname, col_description(s.oid, a.attnum) AS comment,
         pg_get_expr(ad.adbin, ad.adrelid) AS default_expr, a.attacl AS acl
  FROM {views} s JOIN pg_attribute a ON a.attrelid = s.oid
  LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
  WHERE a.attnum > 0 AND NOT a.attisdropped;
  FOR vw IN SELECT * FROM {views} ORDER BY depth DESC, oid LOOP
    EXECUTE format('DROP VIEW %I.%I', vw.schema, vw.name);
  END LOOP;
  RETURN (SELECT count(*) FROM {views});
END
"""

#: GRANT one aclexplode() row again, as its grantor did (a grant by the owner, or by a
#: superuser, is recorded as the owner's; another grantor's through SET LOCAL ROLE)
_GRANT = """
      IF gr.grantor <> vw.owner THEN
        EXECUTE format('SET LOCAL ROLE %I', pg_get_userbyid(gr.grantor));
      END IF;
      EXECUTE format('GRANT %s{cols} ON %I.%I TO %s%s', gr.privilege_type, {colarg}
                     vw.schema, vw.name,
                     CASE WHEN gr.grantee = 0 THEN 'PUBLIC'
                          ELSE quote_ident(pg_get_userbyid(gr.grantee)) END,
                     CASE WHEN gr.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
      IF gr.grantor <> vw.owner THEN
        EXECUTE format('SET LOCAL ROLE %I', me);
      END IF;"""

_RESTORE_BODY = """
DECLARE
  vw record;
  cl record;
  gr record;
  opts text;
  me text := current_user;
BEGIN
  IF to_regclass({views_name}) IS NULL THEN
    RETURN 0;
  END IF;
  FOR vw IN SELECT * FROM {views} ORDER BY depth, oid LOOP
    SELECT ' WITH (' || string_agg(format('%I = %L', split_part(o, '=', 1),
                                          substr(o, strpos(o, '=') + 1)), ', ') || ')'
      INTO opts FROM unnest(vw.options) AS o;
    BEGIN
      EXECUTE format('CREATE VIEW %I.%I%s AS %s', vw.schema, vw.name, coalesce(opts, ''),
                     vw.def);
    EXCEPTION WHEN OTHERS THEN
      RAISE EXCEPTION USING ERRCODE = SQLSTATE,
        MESSAGE = format('view %I.%I cannot be recreated over the changed column(s): %s',
                         vw.schema, vw.name, SQLERRM),
        HINT = 'change the view (CREATE OR REPLACE VIEW) so that it works with the new'
               ' column too, or drop it before the contract and create it again after';
    END;
    EXECUTE format('ALTER VIEW %I.%I OWNER TO %I', vw.schema, vw.name, pg_get_userbyid(vw.owner));
    IF vw.acl IS NOT NULL THEN
      EXECUTE format('REVOKE ALL ON %I.%I FROM %I', vw.schema, vw.name, pg_get_userbyid(vw.owner));
      FOR gr IN SELECT * FROM aclexplode(vw.acl) LOOP{grant}
      END LOOP;
    END IF;
    IF vw.comment IS NOT NULL THEN
      EXECUTE format('COMMENT ON VIEW %I.%I IS %L', vw.schema, vw.name, vw.comment);
    END IF;
    FOR cl IN SELECT * FROM {columns} WHERE oid = vw.oid ORDER BY attnum LOOP
      IF cl.default_expr IS NOT NULL THEN
        EXECUTE format('ALTER VIEW %I.%I ALTER COLUMN %I SET DEFAULT %s',
                       vw.schema, vw.name, cl.attname, cl.default_expr);
      END IF;
      IF cl.comment IS NOT NULL THEN
        EXECUTE format('COMMENT ON COLUMN %I.%I.%I IS %L', vw.schema, vw.name, cl.attname,
                       cl.comment);
      END IF;
      FOR gr IN SELECT * FROM aclexplode(cl.acl) LOOP{col_grant}
      END LOOP;
    END LOOP;
  END LOOP;
  RETURN (SELECT count(*) FROM {views});
END
"""


def _closure(roots: str) -> sql.Composable:
    return sql.SQL(CLOSURE).format(roots=sql.SQL(roots))


def _body(text: str) -> str:
    views = qname("pg_temp", STASH_TABLE)
    return render(
        sql.SQL(text).format(
            closure=_closure(_ROOTS),
            blockers=sql.SQL(BLOCKERS),
            views=views,
            views_name=sql.Literal(render(views)),
            columns=qname("pg_temp", STASH_TABLE + "_columns"),
            grant=sql.SQL(_GRANT.replace("{cols}", "").replace("{colarg}", "")),
            col_grant=sql.SQL(_GRANT.replace("{cols}", " (%I)").replace("{colarg}", "cl.attname,")),
        )
    )


def stash(columns: Sequence[tuple[str, str, str]]) -> list[str]:
    """Statements that stash and drop every view over ``columns`` ((schema, table,
    column) triples), views on them included: run first in the transaction that changes
    the columns; :func:`restore`, then :func:`drop_helpers` after the change."""
    rels = [render(qname(s, t)) for s, t, _ in columns]
    cols = [c for _, _, c in columns]
    fn = qname("pg_temp", STASH_FUNCTION)
    return [
        render(
            sql.SQL(
                "CREATE FUNCTION {fn}(rels text[], cols text[]) RETURNS bigint"
                " LANGUAGE plpgsql AS {body}"
            ).format(fn=fn, body=sql.Literal(_body(_STASH_BODY)))
        ),
        render(
            sql.SQL("CREATE FUNCTION {fn}() RETURNS bigint LANGUAGE plpgsql AS {body}").format(
                fn=qname("pg_temp", RESTORE_FUNCTION), body=sql.Literal(_body(_RESTORE_BODY))
            )
        ),
        render(
            sql.SQL("SELECT {fn}({rels}, {cols})").format(
                fn=fn, rels=_array(rels), cols=_array(cols)
            )
        ),
    ]


def restore() -> list[str]:
    """The statement that recreates the stashed views (owner, privileges, comments,
    column defaults, options) in dependency order."""
    return [render(sql.SQL("SELECT {fn}()").format(fn=qname("pg_temp", RESTORE_FUNCTION)))]


def drop_helpers() -> list[str]:
    """Drop the two helper functions (last in the transaction)."""
    return [
        render(sql.SQL("DROP FUNCTION {fn}()").format(fn=qname("pg_temp", RESTORE_FUNCTION))),
        render(
            sql.SQL("DROP FUNCTION {fn}(text[], text[])").format(
                fn=qname("pg_temp", STASH_FUNCTION)
            )
        ),
    ]


def _array(values: Sequence[str]) -> sql.Composable:
    return sql.SQL("ARRAY[{}]::text[]").format(sql.SQL(", ").join(map(sql.Literal, values)))


_PLAN_VIEWS = """{closure}
SELECT c.tbl AS oid, c.col, n.nspname, v.relname, max(c.depth) AS depth
FROM closure c JOIN pg_class v ON v.oid = c.rel JOIN pg_namespace n ON n.oid = v.relnamespace
WHERE v.relkind = 'v' AND c.rulename = '_RETURN'
GROUP BY 1, 2, 3, 4
"""

#: the planner's view of the same, for the tables ``%(oids)s``: every column's plain
#: views (and views on them), and what stops recreating them
PLAN_VIEWS = render(sql.SQL(_PLAN_VIEWS).format(closure=_closure(_PLAN_ROOTS)))
PLAN_BLOCKERS = render(
    sql.SQL("{closure}{blockers}").format(
        closure=_closure(_PLAN_ROOTS), blockers=sql.SQL(BLOCKERS.replace("%", "%%"))
    )
)
