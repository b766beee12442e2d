-- Registration roles (issue 10 #15): the first account is no longer made admin. 002 made whoever registered first on
-- an empty database admin, so a stack fresh from infra/up handed admin to the first visitor, and the README's
-- example made a known admin login. Now only the address configured as FM_ADMIN_EMAIL becomes admin; everyone
-- else is a member. fm-control passes that address in its normal form (common/email.h: ASCII, lower-cased), or ''
-- when none is configured; lower() of an accepted address is that same normal form, as for users_email_key.
-- The advisory lock of 002 is gone with "first": the unique index on lower(email) alone decides a race for one
-- address.
CREATE OR REPLACE FUNCTION fm_register_user(p_email text, p_password_hash text, p_admin_email text, p_ip inet,
                                            p_request_id text)
RETURNS TABLE (id uuid, email text, role user_role, created_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    new_role user_role := 'member';
    u users;
BEGIN
    IF p_admin_email <> '' AND lower(p_email) = lower(p_admin_email) THEN
        new_role := 'admin';
    END IF;
    INSERT INTO users (email, password_hash, role) VALUES (p_email, p_password_hash, new_role) RETURNING * INTO u;
    INSERT INTO audit_log (actor_id, action, target_type, target_id, ip, request_id, detail)
        VALUES (u.id, 'user.register', 'user', u.id::text, p_ip, p_request_id,
                jsonb_build_object('role', u.role));
    RETURN QUERY SELECT u.id, u.email, u.role, u.created_at;
END $$;
