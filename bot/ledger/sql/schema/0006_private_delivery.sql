-- name: create_private_delivery#
-- Whether results may go to members' DMs, per server: no row means members choose ("allowed");
-- "default" sends them there unless a member asks otherwise; "forbidden" keeps them in the
-- channel.
CREATE TABLE private_delivery (
    platform TEXT NOT NULL,
    guild_id TEXT NOT NULL,
    mode TEXT NOT NULL CHECK (mode IN ('default', 'forbidden')),
    PRIMARY KEY (platform, guild_id)
);
