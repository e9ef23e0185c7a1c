"""PostgreSQL's one money path: every request's charge and settlement in one round trip each.

Installed by migration 9. ``credit_begin()`` is the charge of every metered request, keyed or
not, on every route: it locks the account, refuses a fenced charge id, claims the client's
``Idempotency-Key`` for the request's fingerprint (a replay, a mismatch, one in flight, or the
takeover of a crashed attempt's standing charge), and takes the debit or hold through
``credit_debit()`` / ``credit_hold()``, all in the server; without a request key it is just
those (``Ledger.debit`` and ``Ledger.hold`` use it too). ``credit_finish()`` settles a request:
the capture of its hold (through ``credit_capture()``) and, for a keyed request, its stored
response or freed key, after checking the attempt still owns the key. ``credit_many()`` runs
a batch of both in one transaction (group commit, ``_batch``).

They run exactly ``contract.begin_request`` / ``finish_request`` of the generic path, checking
everything before writing anything; whenever the generic path has more to do (a sweep due, a
refund or a release, a hold to capture late, a charge id that already keys an entry) they
answer ``slow`` having written nothing, and the caller runs the generic path.
``tests/test_ledger_differential.py`` runs both paths step by step, batches included.
"""

from __future__ import annotations

__all__ = ["PG_REQUESTS"]

# The row every function answers: a status, then what that status needs.
_ROW = """o_status text, o_available bigint, o_tier text, o_entry text, o_hold text,
               o_charge text, o_code integer, o_headers text, o_body bytea, o_size bigint"""

PG_REQUESTS = (
    """
CREATE OR REPLACE FUNCTION credit_begin(
    p_account text, p_request text, p_fingerprint text, p_owner text, p_kind text,
    p_amount bigint, p_now bigint, p_hold_expires bigint, p_lease_until bigint,
    p_expires_at bigint, p_layer text, p_route text, p_model text, p_meta text)
RETURNS TABLE ({row})
LANGUAGE plpgsql AS $$
DECLARE
    a record;
    c record;
    e record;
    g record;
    h record;
    r record;
    v_row boolean := false;   -- a request row for the key, not forgotten
    v_old boolean := false;   -- a forgotten one (its time is over): the key is new again
    v_total bigint;
    v_done bigint;
    v_billed bigint;
    v_held boolean := false;  -- h holds the charge's hold
BEGIN
    IF p_request IS NULL THEN  -- a plain charge: credit_debit() or credit_hold() itself
        IF p_kind = 'hold' THEN
            RETURN QUERY SELECT x.o_status, x.o_available, x.o_tier, x.o_entry, x.o_hold,
                    p_owner, NULL::integer, NULL::text, NULL::bytea, NULL::bigint
                FROM credit_hold(p_account, p_amount, p_now, p_hold_expires, p_owner, p_layer,
                                 p_route, p_model, p_meta) AS x;
        ELSE
            RETURN QUERY SELECT x.o_status, x.o_available, x.o_tier, x.o_entry, NULL::text,
                    p_owner, NULL::integer, NULL::text, NULL::bytea, NULL::bigint
                FROM credit_debit(p_account, p_amount, p_now, p_owner, p_layer, p_route,
                                  p_model, p_meta) AS x;
        END IF;
        RETURN;
    END IF;
    -- the account first (the lock order of every operation): every claim of the account's
    -- keys waits for the others, so that a key is never claimed under a charge being made
    SELECT tier, balance, held, sweep_at INTO a
        FROM credit_accounts WHERE account_id = p_account FOR UPDATE;
    IF NOT FOUND AND p_kind IS NOT NULL THEN
        o_status := 'not_found'; o_available := 0; RETURN NEXT; RETURN;
    END IF;
    o_tier := a.tier;
    IF EXISTS (SELECT 1 FROM credit_voids
               WHERE account_id = p_account AND charge_key = p_owner) THEN
        o_status := 'voided'; o_available := 0; RETURN NEXT; RETURN;
    END IF;
    o_status := 'new';
    SELECT * INTO r FROM credit_requests
        WHERE account_id = p_account AND request_key = p_request FOR UPDATE;
    IF FOUND THEN
        v_old := r.expires_at <= p_now AND (r.state = 'done' OR r.charge_key IS NULL);
        v_row := NOT v_old;
    END IF;
    IF v_row THEN
        IF r.fingerprint <> p_fingerprint THEN
            o_status := 'mismatch'; RETURN NEXT; RETURN;
        END IF;
        IF r.state = 'done' THEN
            o_status := 'replay'; o_charge := r.charge_key; o_code := r.status;
            o_headers := r.headers; o_body := r.body; o_size := r.body_size;
            RETURN NEXT; RETURN;
        END IF;
        IF r.lease_until > p_now THEN
            o_status := 'inflight'; RETURN NEXT; RETURN;
        END IF;
        o_status := 'resumed';
        IF r.charge_key IS NOT NULL THEN
            -- the crashed attempt's charge, if it still pays: served under it
            SELECT * INTO e FROM credit_entries
                WHERE account_id = p_account AND idempotency_key = r.charge_key;
            IF FOUND THEN
                v_billed := NULL;
                IF e.kind = 'hold' THEN
                    SELECT * INTO h FROM credit_holds WHERE hold_id = e.hold_id;
                    v_held := true;
                    IF h.status = 'active' AND h.expires_at > p_now THEN
                        v_billed := 0;
                    ELSIF h.status = 'captured' THEN
                        SELECT * INTO g FROM credit_entries
                            WHERE hold_id = e.hold_id AND kind IN ('capture', 'debit')
                            ORDER BY CASE kind WHEN 'capture' THEN 0 ELSE 1 END LIMIT 1;
                        IF FOUND THEN
                            e := g;
                            v_billed := e.amount;
                        END IF;
                    END IF;
                ELSE
                    v_billed := e.amount;
                END IF;
                IF v_billed IS NOT NULL AND v_billed > 0 THEN
                    SELECT COALESCE(SUM(amount), 0) INTO v_done FROM credit_entries
                        WHERE ref_entry_id = e.entry_id AND kind = 'refund';
                    IF v_done >= v_billed THEN
                        v_billed := NULL;
                    END IF;
                END IF;
                IF v_billed IS NOT NULL THEN
                    UPDATE credit_requests SET owner = p_owner, lease_until = p_lease_until,
                            expires_at = GREATEST(expires_at, p_expires_at)
                        WHERE account_id = p_account AND request_key = p_request;
                    SELECT COALESCE(SUM(remaining), 0) INTO v_total FROM credit_grants
                        WHERE account_id = p_account AND remaining > 0 AND effective_at <= p_now;
                    o_status := 'standing';  -- resumed under the charge found standing
                    o_available := v_total - a.held;
                    o_charge := r.charge_key;
                    o_entry := row_to_json(e)::text;
                    IF v_held THEN
                        o_hold := row_to_json(h)::text;
                    END IF;
                    RETURN NEXT; RETURN;
                END IF;
            END IF;
        END IF;
    END IF;
    IF p_kind IS NOT NULL THEN  -- this attempt's charge, by credit_debit() or credit_hold()
        IF EXISTS (SELECT 1 FROM credit_entries
                   WHERE account_id = p_account AND idempotency_key = p_owner) THEN
            o_status := 'slow'; o_available := 0; RETURN NEXT; RETURN;
        END IF;
        IF p_kind = 'hold' THEN
            SELECT * INTO c FROM credit_hold(p_account, p_amount, p_now, p_hold_expires, p_owner,
                                             p_layer, p_route, p_model, p_meta);
            o_hold := c.o_hold;
        ELSE
            SELECT *, NULL::text AS o_hold INTO c FROM credit_debit(
                p_account, p_amount, p_now, p_owner, p_layer, p_route, p_model, p_meta);
        END IF;
        o_available := c.o_available; o_tier := c.o_tier; o_entry := c.o_entry;
        IF c.o_status <> 'ok' THEN  -- slow or insufficient: nothing was written
            o_status := c.o_status; o_hold := NULL; RETURN NEXT; RETURN;
        END IF;
        IF o_status = 'new' THEN
            o_status := 'ok';
        END IF;
    END IF;
    -- the claim (every other claim of the account's keys waits for the account's lock)
    IF v_row THEN
        UPDATE credit_requests SET owner = p_owner, lease_until = p_lease_until,
                expires_at = GREATEST(expires_at, p_expires_at),
                charge_key = CASE WHEN p_kind IS NULL THEN charge_key ELSE p_owner END
            WHERE account_id = p_account AND request_key = p_request;
    ELSIF v_old THEN
        UPDATE credit_requests SET fingerprint = p_fingerprint, state = 'pending',
                owner = p_owner, lease_until = p_lease_until,
                charge_key = CASE WHEN p_kind IS NULL THEN NULL ELSE p_owner END,
                status = NULL, headers = NULL, body = NULL, body_size = NULL,
                created_at = p_now, expires_at = p_expires_at
            WHERE account_id = p_account AND request_key = p_request;
    ELSE
        INSERT INTO credit_requests (account_id, request_key, fingerprint, state, owner,
                                     lease_until, charge_key, created_at, expires_at)
            VALUES (p_account, p_request, p_fingerprint, 'pending', p_owner, p_lease_until,
                    CASE WHEN p_kind IS NULL THEN NULL ELSE p_owner END, p_now, p_expires_at)
            ON CONFLICT (account_id, request_key) DO NOTHING;
        IF NOT FOUND THEN
            IF p_kind IS NOT NULL THEN  -- cannot be, under the account's lock: never charge
                RAISE EXCEPTION 'credit_begin: key % of % claimed under its charge',
                    p_request, p_account;
            END IF;
            o_status := 'inflight'; RETURN NEXT; RETURN;  -- an account not opened yet
        END IF;
    END IF;
    o_charge := p_owner;
    RETURN NEXT;
END $$;

CREATE OR REPLACE FUNCTION credit_finish(
    p_account text, p_request text, p_owner text, p_now bigint, p_hold bigint,
    p_amount bigint, p_code integer, p_headers text, p_body bytea, p_size bigint,
    p_expires_at bigint, p_keep boolean, p_layer text, p_route text, p_model text, p_meta text)
RETURNS TABLE ({row})
LANGUAGE plpgsql AS $$
DECLARE
    c record;
    r record;
BEGIN
    o_status := 'ok';
    IF p_hold IS NOT NULL AND p_request IS NOT NULL THEN
        -- the account first: the lock order of every operation
        PERFORM 1 FROM credit_accounts WHERE account_id = p_account FOR UPDATE;
    END IF;
    IF p_request IS NOT NULL THEN
        SELECT owner INTO r FROM credit_requests
            WHERE account_id = p_account AND request_key = p_request FOR UPDATE;
        IF NOT FOUND OR r.owner <> p_owner THEN
            o_status := 'not_owned'; RETURN NEXT; RETURN;
        END IF;
    END IF;
    IF p_hold IS NOT NULL THEN
        SELECT * INTO c FROM credit_capture(p_hold, p_amount, p_now, p_layer, p_route, p_model,
                                            p_meta);
        o_available := c.o_available; o_tier := c.o_tier; o_entry := c.o_entry;
        o_hold := c.o_hold;
        o_status := c.o_status;
        IF c.o_status = 'not_active' THEN
            IF c.o_entry = 'expired' THEN
                o_status := 'slow';  -- a capture to make late: the generic path's
            END IF;
            RETURN NEXT; RETURN;
        END IF;
        IF c.o_status = 'replayed' THEN
            IF (c.o_entry::json ->> 'entry_id') IS NULL THEN
                o_status := 'slow';  -- the replay of a late capture
                RETURN NEXT; RETURN;
            END IF;
            IF COALESCE((c.o_entry::json ->> 'metadata')::json ->> 'requested_micros',
                        c.o_entry::json ->> 'amount')::bigint <> p_amount THEN
                o_status := 'not_active'; o_entry := 'captured'; RETURN NEXT; RETURN;
            END IF;
        END IF;
        IF o_status NOT IN ('ok', 'replayed') THEN
            RETURN NEXT; RETURN;
        END IF;
    END IF;
    IF p_request IS NOT NULL THEN
        IF p_code IS NOT NULL THEN
            UPDATE credit_requests SET state = 'done', status = p_code, headers = p_headers,
                    body = p_body, body_size = p_size
                WHERE account_id = p_account AND request_key = p_request;
        ELSIF NOT p_keep THEN
            DELETE FROM credit_requests
                WHERE account_id = p_account AND request_key = p_request;
        END IF;
    END IF;
    RETURN NEXT;
END $$;

CREATE OR REPLACE FUNCTION credit_many(
    p_ops text[], p_accounts text[], p_requests text[], p_fingerprints text[], p_owners text[],
    p_kinds text[], p_amounts bigint[], p_nows bigint[], p_n1 bigint[], p_n2 bigint[],
    p_n3 bigint[], p_layers text[], p_routes text[], p_models text[], p_metas text[],
    p_codes integer[], p_headers text[], p_bodies bytea[], p_keep boolean[])
RETURNS TABLE (o_index integer, {row})
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. COALESCE(array_length(p_ops, 1), 0) LOOP
        IF p_ops[i] = 'begin' THEN
            RETURN QUERY SELECT i, b.* FROM credit_begin(
                p_accounts[i], p_requests[i], p_fingerprints[i], p_owners[i], p_kinds[i],
                p_amounts[i], p_nows[i], p_n1[i], p_n2[i], p_n3[i], p_layers[i], p_routes[i],
                p_models[i], p_metas[i]) AS b;
        ELSE
            RETURN QUERY SELECT i, f.* FROM credit_finish(
                p_accounts[i], p_requests[i], p_owners[i], p_nows[i], p_n1[i], p_amounts[i],
                p_codes[i], p_headers[i], p_bodies[i], p_n2[i], p_n3[i], p_keep[i],
                p_layers[i], p_routes[i], p_models[i], p_metas[i]) AS f;
        END IF;
    END LOOP;
END $$;

-- A stored response updates its request row in place (a HOT update: it changes no indexed
-- column, and the page has room for the new version).
ALTER TABLE credit_requests SET (fillfactor = 70);
"""
).replace("{row}", _ROW)
