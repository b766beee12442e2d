-- Account operations that must be atomic, as functions so that each is one round trip from the event loop.

-- Registration: the first user, or the configured admin email, becomes admin. The advisory lock makes
-- "first" exact when two people register at the same moment on an empty system.
CREATE FUNCTION fm_register_user(p_email text, p_password_hash text, p_admin_email text, p_ip inet, p_request_id text)
RETURNS TABLE (id uuid, email text, role user_role, created_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    new_role user_role := 'member';
    u users;
BEGIN
    PERFORM pg_advisory_xact_lock(7403111);
    IF NOT EXISTS (SELECT 1 FROM users) OR (p_admin_email <> '' AND lower(p_email) = lower(p_admin_email)) THEN
        new_role := 'admin';
    END IF;
    INSERT INTO users (email, password_hash, role) VALUES (p_email, p_password_hash, new_role) RETURNING * INTO u;
    INSERT INTO audit_log (actor_id, action, target_type, target_id, ip, request_id)
        VALUES (u.id, 'user.register', 'user', u.id::text, p_ip, p_request_id);
    RETURN QUERY SELECT u.id, u.email, u.role, u.created_at;
END $$;

-- Login: a new session with its first refresh token (generation 1).
CREATE FUNCTION fm_session_create(p_user_id uuid, p_token_hash bytea, p_ttl_seconds integer, p_user_agent text,
                                  p_ip inet, p_request_id text)
RETURNS TABLE (session_id uuid, expires_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    s sessions;
BEGIN
    INSERT INTO sessions (user_id, expires_at, user_agent, ip)
        VALUES (p_user_id, now() + make_interval(secs => p_ttl_seconds), left(p_user_agent, 512), p_ip)
        RETURNING * INTO s;
    INSERT INTO refresh_tokens (token_hash, session_id, generation, expires_at)
        VALUES (p_token_hash, s.id, 1, s.expires_at);
    INSERT INTO audit_log (actor_id, action, target_type, target_id, ip, request_id)
        VALUES (p_user_id, 'session.login', 'session', s.id::text, p_ip, p_request_id);
    RETURN QUERY SELECT s.id, s.expires_at;
END $$;

-- Refresh-token rotation with reuse detection (OAuth 2.0 Security BCP §4.14): a token can be exchanged once.
-- Presenting one that was already exchanged means it leaked: the whole session (the token family) is revoked.
-- outcome: 'ok' | 'invalid' (unknown) | 'expired' | 'revoked' (session ended) | 'reused' (family now revoked)
CREATE FUNCTION fm_refresh_rotate(p_old_hash bytea, p_new_hash bytea, p_ip inet, p_request_id text)
RETURNS TABLE (outcome text, session_id uuid, user_id uuid, role user_role, email text, expires_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    t refresh_tokens;
    s sessions;
    u users;
BEGIN
    SELECT * INTO t FROM refresh_tokens WHERE token_hash = p_old_hash FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'invalid', NULL::uuid, NULL::uuid, NULL::user_role, NULL::text, NULL::timestamptz;
        RETURN;
    END IF;
    SELECT * INTO s FROM sessions WHERE id = t.session_id FOR UPDATE;
    SELECT * INTO u FROM users WHERE id = s.user_id;
    IF s.revoked_at IS NOT NULL OR u.disabled_at IS NOT NULL THEN
        RETURN QUERY SELECT 'revoked', s.id, s.user_id, u.role, u.email, s.expires_at;
        RETURN;
    END IF;
    IF t.used_at IS NOT NULL THEN
        UPDATE sessions SET revoked_at = now(), revoked_reason = 'reuse_detected' WHERE id = s.id;
        INSERT INTO audit_log (actor_id, action, target_type, target_id, ip, request_id, detail)
            VALUES (s.user_id, 'session.refresh_reuse', 'session', s.id::text, p_ip, p_request_id,
                    jsonb_build_object('generation', t.generation));
        RETURN QUERY SELECT 'reused', s.id, s.user_id, u.role, u.email, s.expires_at;
        RETURN;
    END IF;
    IF t.expires_at <= now() OR s.expires_at <= now() THEN
        RETURN QUERY SELECT 'expired', s.id, s.user_id, u.role, u.email, s.expires_at;
        RETURN;
    END IF;
    UPDATE refresh_tokens SET used_at = now() WHERE token_hash = p_old_hash;
    INSERT INTO refresh_tokens (token_hash, session_id, generation, expires_at)
        VALUES (p_new_hash, s.id, t.generation + 1, s.expires_at);
    UPDATE sessions SET last_seen_at = now() WHERE id = s.id;
    RETURN QUERY SELECT 'ok', s.id, s.user_id, u.role, u.email, s.expires_at;
END $$;

-- Users known only through an external identity provider's token are provisioned on first sight.
CREATE FUNCTION fm_external_user(p_issuer text, p_subject text, p_default_role user_role)
RETURNS TABLE (id uuid, role user_role, email text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    INSERT INTO users (email, external_issuer, external_subject, role)
        VALUES (left(p_subject, 200) || '@' || left(regexp_replace(p_issuer, '^https?://', ''), 50) || '.external',
                p_issuer, p_subject, p_default_role)
        ON CONFLICT DO NOTHING;
    RETURN QUERY SELECT u.id, u.role, u.email FROM users u
        WHERE u.external_issuer = p_issuer AND u.external_subject = p_subject;
END $$;
