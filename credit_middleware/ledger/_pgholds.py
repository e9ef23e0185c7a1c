"""PostgreSQL's one-round-trip hold and capture (the LLM path), installed by migration 7.

They run exactly the generic ``_ops.hold`` and ``_ops.capture`` inside the server: lock the
account, replay a key (the caller checks that the replay matches), refuse a voided charge id,
check what is available, write the hold or the capture with its postings. Whenever a sweep is
due (a grant or hold expired) they answer ``slow`` and the caller runs the generic path, which
sweeps first; so here nothing has expired and the generic path's forced sweep after a capture
reduces to recomputing the next sweep time. The differential tests run both paths step by step.
"""

from __future__ import annotations

__all__ = ["PG_HOLDS"]

PG_HOLDS = """
CREATE OR REPLACE FUNCTION credit_hold(
    p_account text, p_amount bigint, p_now bigint, p_expires bigint, p_key text,
    p_layer text, p_route text, p_model text, p_meta text)
RETURNS TABLE (o_status text, o_available bigint, o_tier text, o_entry text, o_hold text)
LANGUAGE plpgsql AS $$
DECLARE
    a record;
    e record;
    h record;
    v_total bigint;
BEGIN
    SELECT tier, balance, held, sweep_at INTO a
        FROM credit_accounts WHERE account_id = p_account FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_found'::text, 0::bigint, NULL::text, NULL::text, NULL::text;
        RETURN;
    END IF;
    IF a.sweep_at IS NOT NULL AND a.sweep_at <= p_now THEN
        RETURN QUERY SELECT 'slow'::text, 0::bigint, a.tier, NULL::text, NULL::text;
        RETURN;
    END IF;
    SELECT COALESCE(SUM(remaining), 0) INTO v_total FROM credit_grants
        WHERE account_id = p_account AND remaining > 0 AND effective_at <= p_now;
    IF p_key IS NOT NULL THEN
        SELECT * INTO e FROM credit_entries
            WHERE account_id = p_account AND idempotency_key = p_key;
        IF FOUND THEN
            SELECT * INTO h FROM credit_holds WHERE hold_id = e.hold_id;
            RETURN QUERY SELECT 'replayed'::text, v_total - a.held, a.tier, row_to_json(e)::text,
                CASE WHEN e.hold_id IS NULL THEN NULL ELSE row_to_json(h)::text END;
            RETURN;
        END IF;
        IF EXISTS (SELECT 1 FROM credit_voids
                   WHERE account_id = p_account AND charge_key = p_key) THEN
            RETURN QUERY SELECT 'voided'::text, v_total - a.held, a.tier, NULL::text, NULL::text;
            RETURN;
        END IF;
    END IF;
    IF p_amount > v_total - a.held THEN
        RETURN QUERY SELECT 'insufficient'::text, v_total - a.held, a.tier, NULL::text,
            NULL::text;
        RETURN;
    END IF;
    INSERT INTO credit_holds (account_id, amount, status, expires_at, idempotency_key, metadata,
                              created_at)
        VALUES (p_account, p_amount, 'active', p_expires, p_key, p_meta, p_now)
        RETURNING * INTO h;
    INSERT INTO credit_entries (account_id, kind, amount, delta, held_delta, balance_after,
                                held_after, hold_id, idempotency_key, layer, route, model,
                                metadata, created_at)
        VALUES (p_account, 'hold', p_amount, 0, p_amount, a.balance, a.held + p_amount,
                h.hold_id, p_key, p_layer, p_route, p_model, p_meta, p_now)
        RETURNING * INTO e;
    UPDATE credit_accounts SET
            held = held + p_amount,
            sweep_at = CASE WHEN sweep_at IS NULL OR p_expires < sweep_at
                            THEN p_expires ELSE sweep_at END,
            updated_at = p_now
        WHERE account_id = p_account;
    RETURN QUERY SELECT 'ok'::text, v_total - a.held - p_amount, a.tier, row_to_json(e)::text,
        row_to_json(h)::text;
END $$;

CREATE OR REPLACE FUNCTION credit_capture(
    p_hold bigint, p_amount bigint, p_now bigint, p_layer text, p_route text, p_model text,
    p_meta text)
RETURNS TABLE (o_status text, o_available bigint, o_tier text, o_entry text, o_hold text)
LANGUAGE plpgsql AS $$
DECLARE
    a record;
    e record;
    g record;
    h record;
    v_total bigint;
    v_charge bigint;
    v_left bigint;
    v_take bigint;
    v_meta jsonb;
    v_next bigint;
BEGIN
    SELECT * INTO h FROM credit_holds WHERE hold_id = p_hold;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'hold_not_found'::text, 0::bigint, NULL::text, NULL::text,
            NULL::text;
        RETURN;
    END IF;
    SELECT tier, balance, held, sweep_at INTO a
        FROM credit_accounts WHERE account_id = h.account_id FOR UPDATE;
    SELECT * INTO h FROM credit_holds WHERE hold_id = p_hold;
    SELECT COALESCE(SUM(remaining), 0) INTO v_total FROM credit_grants
        WHERE account_id = h.account_id AND remaining > 0 AND effective_at <= p_now;
    IF h.status = 'captured' THEN
        SELECT * INTO e FROM credit_entries WHERE hold_id = p_hold AND kind = 'capture';
        RETURN QUERY SELECT 'replayed'::text, v_total - a.held, a.tier, row_to_json(e)::text,
            row_to_json(h)::text;
        RETURN;
    END IF;
    IF h.status <> 'active' OR h.expires_at <= p_now THEN
        RETURN QUERY SELECT 'not_active'::text, 0::bigint, a.tier,
            CASE WHEN h.status = 'active' THEN 'expired' ELSE h.status END, NULL::text;
        RETURN;
    END IF;
    IF a.sweep_at IS NOT NULL AND a.sweep_at <= p_now THEN
        RETURN QUERY SELECT 'slow'::text, 0::bigint, a.tier, NULL::text, NULL::text;
        RETURN;
    END IF;
    UPDATE credit_holds SET status = 'captured', closed_at = p_now WHERE hold_id = p_hold;
    v_charge := GREATEST(0, LEAST(p_amount, v_total - (a.held - h.amount)));
    v_meta := p_meta::jsonb || jsonb_build_object('requested_micros', p_amount);
    IF v_charge < p_amount THEN
        v_meta := v_meta || jsonb_build_object('shortfall_micros', p_amount - v_charge);
    END IF;
    INSERT INTO credit_entries (account_id, kind, amount, delta, held_delta, balance_after,
                                held_after, hold_id, layer, route, model, metadata, created_at)
        VALUES (h.account_id, 'capture', v_charge, -v_charge, -h.amount, a.balance - v_charge,
                a.held - h.amount, p_hold, p_layer, p_route, p_model, v_meta::text, p_now)
        RETURNING * INTO e;
    v_left := v_charge;
    FOR g IN SELECT grant_id, remaining FROM credit_grants
            WHERE account_id = h.account_id AND remaining > 0 AND effective_at <= p_now
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
    SELECT MIN(t) INTO v_next FROM (
        SELECT MIN(expires_at) AS t FROM credit_grants
            WHERE account_id = h.account_id AND remaining > 0 AND expires_at IS NOT NULL
        UNION ALL
        SELECT MIN(expires_at) AS t FROM credit_holds
            WHERE account_id = h.account_id AND status = 'active') AS s;
    UPDATE credit_accounts SET balance = balance - v_charge, held = held - h.amount,
            sweep_at = v_next, updated_at = p_now
        WHERE account_id = h.account_id;
    SELECT * INTO h FROM credit_holds WHERE hold_id = p_hold;
    RETURN QUERY SELECT 'ok'::text, v_total - v_charge - (a.held - h.amount), a.tier,
        row_to_json(e)::text, row_to_json(h)::text;
END $$;
"""
