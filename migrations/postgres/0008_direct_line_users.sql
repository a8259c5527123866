-- The Direct Line user id chatgate binds a user's Direct Line tokens to
-- ([apps.direct_line]): random (dl_ + 128 bits), made at the user's first
-- Direct Line token and kept until the user signs out, so the bot sees one
-- stable, unguessable activity.from.id. /bf maps it back to the user.
CREATE TABLE direct_line_users (
    app          TEXT    NOT NULL,
    user_id      TEXT    NOT NULL,
    dl_user_id   TEXT    NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (app, user_id)
);
CREATE UNIQUE INDEX direct_line_users_by_id ON direct_line_users (app, dl_user_id);
