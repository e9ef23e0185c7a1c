"""PostgreSQL's one-round-trip debit and provisioning, installed by migrations.

The hot path of every metered request. It runs exactly the generic debit of ``_ops.debit``
(lock the account, replay a key, check available, consume grants in order, append the entry
and its postings) inside the server; when a sweep is due (a grant or hold expired) it answers
``slow`` and the caller runs the generic path, which sweeps first. The property tests run
both paths against the same model, and ``tests/test_ledger_differential.py`` runs the two
against each other step by step (receipts, errors and their wording, balances).
"""

from __future__ import annotations

from ..money import MAX_BALANCE_MICROS

PG_FUNCTIONS = """
CREATE OR REPLACE FUNCTION credit_debit(
    p_account text, p_amount bigint, p_now bigint, p_key text,
    p_layer text, p_route text, p_model text, p_meta text)
RETURNS TABLE (o_status text, o_available bigint, o_tier text, o_entry text)
LANGUAGE plpgsql AS $$
DECLARE
    a record;
    e record;
    g record;
    v_total bigint;
    v_left bigint;
    v_take bigint;
BEGIN
    SELECT tier, balance, held, sweep_at INTO a
        FROM credit_accounts WHERE account_id = p_account FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_found'::text, 0::bigint, NULL::text, NULL::text;
        RETURN;
    END IF;
    IF a.sweep_at IS NOT NULL AND a.sweep_at <= p_now THEN
        RETURN QUERY SELECT 'slow'::text, 0::bigint, a.tier, NULL::text;
        RETURN;
    END IF;
    SELECT COALESCE(SUM(remaining), 0) INTO v_total FROM credit_grants
        WHERE account_id = p_account AND remaining > 0 AND effective_at <= p_now;
    IF p_key IS NOT NULL THEN
        SELECT * INTO e FROM credit_entries
            WHERE account_id = p_account AND idempotency_key = p_key;
        IF FOUND THEN
            RETURN QUERY SELECT 'replayed'::text, v_total - a.held, a.tier, row_to_json(e)::text;
            RETURN;
        END IF;
    END IF;
    IF p_amount > v_total - a.held THEN
        RETURN QUERY SELECT 'insufficient'::text, v_total - a.held, a.tier, NULL::text;
        RETURN;
    END IF;
    INSERT INTO credit_entries (account_id, kind, amount, delta, held_delta, balance_after,
                                held_after, idempotency_key, layer, route, model, metadata,
                                created_at)
        VALUES (p_account, 'debit', p_amount, -p_amount, 0, a.balance - p_amount, a.held,
                p_key, p_layer, p_route, p_model, p_meta, p_now)
        RETURNING * INTO e;
    v_left := p_amount;
    FOR g IN SELECT grant_id, remaining FROM credit_grants
            WHERE account_id = p_account AND remaining > 0 AND effective_at <= p_now
            ORDER BY CASE WHEN expires_at IS NOT NULL AND expires_at <= p_now THEN 0 ELSE 1 END,
                     priority, expires_at NULLS LAST, created_at, grant_id
    LOOP
        EXIT WHEN v_left <= 0;
        v_take := LEAST(g.remaining, v_left);
        UPDATE credit_grants SET remaining = remaining - v_take WHERE grant_id = g.grant_id;
        INSERT INTO credit_postings (entry_id, grant_id, amount)
            VALUES (e.entry_id, g.grant_id, -v_take);
        v_left := v_left - v_take;
    END LOOP;
    UPDATE credit_accounts SET balance = balance - p_amount, updated_at = p_now
        WHERE account_id = p_account;
    RETURN QUERY SELECT 'ok'::text, v_total - a.held - p_amount, a.tier, row_to_json(e)::text;
END $$;
"""

# Provisioning in one round trip: open the account if missing and give it its one trial grant,
# as Ledger.provision does in its generic form (the unique index on trial grants stays the
# final word). No sweep is needed: the new entry's balance_after continues the ledger's sum.
PG_PROVISION = """
CREATE OR REPLACE FUNCTION credit_provision(
    p_account text, p_tier text, p_cohort text, p_account_meta text, p_now bigint,
    p_amount bigint, p_priority integer, p_effective bigint, p_expires bigint,
    p_layer text, p_grant_meta text)
RETURNS TABLE (o_created boolean, o_account text, o_entry text, o_grant text)
LANGUAGE plpgsql AS $$
DECLARE
    v_created boolean;
    a record;
    g record;
    e record;
BEGIN
    INSERT INTO credit_accounts (account_id, tier, cohort, metadata, created_at, updated_at)
        VALUES (p_account, p_tier, p_cohort, p_account_meta, p_now, p_now)
        ON CONFLICT (account_id) DO NOTHING;
    v_created := FOUND;
    SELECT * INTO a FROM credit_accounts WHERE account_id = p_account FOR UPDATE;
    IF p_amount IS NULL
       OR EXISTS (SELECT 1 FROM credit_grants WHERE account_id = p_account AND source = 'trial')
       OR EXISTS (SELECT 1 FROM credit_grants
                  WHERE account_id = p_account AND idempotency_key = 'trial') THEN
        RETURN QUERY SELECT v_created, row_to_json(a)::text, NULL::text, NULL::text;
        RETURN;
    END IF;
    INSERT INTO credit_grants (account_id, source, amount, remaining, priority, effective_at,
                               expires_at, idempotency_key, layer, metadata, created_at)
        VALUES (p_account, 'trial', p_amount, p_amount, p_priority, p_effective, p_expires,
                'trial', p_layer, p_grant_meta, p_now)
        RETURNING * INTO g;
    INSERT INTO credit_entries (account_id, kind, amount, delta, held_delta, balance_after,
                                held_after, grant_id, idempotency_key, layer, metadata,
                                created_at)
        VALUES (p_account, 'grant', p_amount, p_amount, 0, a.balance + p_amount, a.held,
                g.grant_id, 'trial', p_layer, p_grant_meta, p_now)
        RETURNING * INTO e;
    INSERT INTO credit_postings (entry_id, grant_id, amount)
        VALUES (e.entry_id, g.grant_id, p_amount);
    UPDATE credit_accounts SET
            balance = balance + p_amount,
            sweep_at = CASE
                WHEN p_expires IS NULL THEN sweep_at
                WHEN sweep_at IS NULL OR p_expires < sweep_at THEN p_expires
                ELSE sweep_at END,
            updated_at = p_now
        WHERE account_id = p_account
        RETURNING * INTO a;
    RETURN QUERY SELECT v_created, row_to_json(a)::text, row_to_json(e)::text,
                        row_to_json(g)::text;
END $$;
"""

# Migration 4: the same debit, refusing a charge id that was voided (its caller answered
# "nothing charged" after losing track of this operation: a late arrival must not charge).
# Derived from the released text so the two cannot drift apart.
_BEFORE_CHECK = "    IF p_amount > v_total - a.held THEN"
PG_DEBIT_VOIDS = PG_FUNCTIONS.replace(
    _BEFORE_CHECK,
    """    IF p_key IS NOT NULL AND EXISTS (
            SELECT 1 FROM credit_voids WHERE account_id = p_account AND charge_key = p_key) THEN
        RETURN QUERY SELECT 'voided'::text, v_total - a.held, a.tier, NULL::text;
        RETURN;
    END IF;
"""
    + _BEFORE_CHECK,
)
assert PG_FUNCTIONS.count(_BEFORE_CHECK) == 1

# Migration 7: group commit. The same credit_debit() for each debit of a batch, in one
# transaction and one round trip; o_index says which input each row answers.
PG_DEBIT_MANY = """
CREATE OR REPLACE FUNCTION credit_debit_many(
    p_accounts text[], p_amounts bigint[], p_nows bigint[], p_keys text[],
    p_layers text[], p_routes text[], p_models text[], p_metas text[])
RETURNS TABLE (o_index integer, o_status text, o_available bigint, o_tier text, o_entry text)
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. COALESCE(array_length(p_accounts, 1), 0) LOOP
        RETURN QUERY SELECT i, d.o_status, d.o_available, d.o_tier, d.o_entry
            FROM credit_debit(p_accounts[i], p_amounts[i], p_nows[i], p_keys[i],
                              p_layers[i], p_routes[i], p_models[i], p_metas[i]) AS d;
    END LOOP;
END $$;
"""

# Migration 5: provisioning that never decides a case the generic path would decide otherwise.
# It handles the two common cases in one round trip (open + trial grant; nothing to do) and
# answers ``slow`` for every unusual one, so that the generic path (``Ledger.provision``)
# decides, with its own errors and wording: a sweep due (an expired grant or timed-out hold
# must leave the balance first), the key ``trial`` taken by another entry (a debit or hold an
# operator keyed so), or a balance that the grant would lift above the cap; none of these can
# hold for an account this call created, so ``created`` stays exact. The key ``trial`` fenced
# as a voided charge id (migration 4) is looked up before anything is written, as a void may
# name an account that does not exist yet. ``o_available`` is what the generic receipt says:
# effective, unexpired remaining minus active holds.
# The return type changes (o_status, o_available), hence DROP and CREATE, in one transaction;
# the old columns keep their meaning, so a process still on the old code that meets a 'slow'
# answer with an account row reads it as "nothing granted".
PG_PROVISION_V5 = """
DROP FUNCTION credit_provision(text, text, text, text, bigint, bigint, integer, bigint, bigint,
                               text, text);
CREATE FUNCTION credit_provision(
    p_account text, p_tier text, p_cohort text, p_account_meta text, p_now bigint,
    p_amount bigint, p_priority integer, p_effective bigint, p_expires bigint,
    p_layer text, p_grant_meta text)
RETURNS TABLE (o_status text, o_created boolean, o_account text, o_entry text, o_grant text,
               o_available bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_created boolean;
    v_available bigint;
    a record;
    g record;
    e record;
BEGIN
    IF p_amount IS NOT NULL AND EXISTS (
            SELECT 1 FROM credit_voids WHERE account_id = p_account AND charge_key = 'trial') THEN
        RETURN QUERY SELECT 'slow'::text, false, NULL::text, NULL::text, NULL::text,
                            NULL::bigint;
        RETURN;
    END IF;
    INSERT INTO credit_accounts (account_id, tier, cohort, metadata, created_at, updated_at)
        VALUES (p_account, p_tier, p_cohort, p_account_meta, p_now, p_now)
        ON CONFLICT (account_id) DO NOTHING;
    v_created := FOUND;
    SELECT * INTO a FROM credit_accounts WHERE account_id = p_account FOR UPDATE;
    IF p_amount IS NULL
       OR EXISTS (SELECT 1 FROM credit_grants WHERE account_id = p_account AND source = 'trial')
       OR EXISTS (SELECT 1 FROM credit_grants
                  WHERE account_id = p_account AND idempotency_key = 'trial') THEN
        RETURN QUERY SELECT 'skipped'::text, v_created, row_to_json(a)::text, NULL::text,
                            NULL::text, NULL::bigint;
        RETURN;
    END IF;
    IF (a.sweep_at IS NOT NULL AND a.sweep_at <= p_now)
       OR a.balance + p_amount > {max_balance}
       OR EXISTS (SELECT 1 FROM credit_entries
                  WHERE account_id = p_account AND idempotency_key = 'trial') THEN
        RETURN QUERY SELECT 'slow'::text, v_created, row_to_json(a)::text, NULL::text,
                            NULL::text, NULL::bigint;
        RETURN;
    END IF;
    INSERT INTO credit_grants (account_id, source, amount, remaining, priority, effective_at,
                               expires_at, idempotency_key, layer, metadata, created_at)
        VALUES (p_account, 'trial', p_amount, p_amount, p_priority, p_effective, p_expires,
                'trial', p_layer, p_grant_meta, p_now)
        RETURNING * INTO g;
    INSERT INTO credit_entries (account_id, kind, amount, delta, held_delta, balance_after,
                                held_after, grant_id, idempotency_key, layer, metadata,
                                created_at)
        VALUES (p_account, 'grant', p_amount, p_amount, 0, a.balance + p_amount, a.held,
                g.grant_id, 'trial', p_layer, p_grant_meta, p_now)
        RETURNING * INTO e;
    INSERT INTO credit_postings (entry_id, grant_id, amount)
        VALUES (e.entry_id, g.grant_id, p_amount);
    UPDATE credit_accounts SET
            balance = balance + p_amount,
            sweep_at = CASE
                WHEN p_expires IS NULL THEN sweep_at
                WHEN sweep_at IS NULL OR p_expires < sweep_at THEN p_expires
                ELSE sweep_at END,
            updated_at = p_now
        WHERE account_id = p_account
        RETURNING * INTO a;
    SELECT COALESCE(SUM(remaining), 0) - a.held INTO v_available FROM credit_grants
        WHERE account_id = p_account AND remaining > 0 AND effective_at <= p_now;
    RETURN QUERY SELECT 'granted'::text, v_created, row_to_json(a)::text, row_to_json(e)::text,
                        row_to_json(g)::text, v_available;
END $$;
""".replace("{max_balance}", str(MAX_BALANCE_MICROS))
