-- name: create_channel_rules#
-- Where jobs may start, per server: no row for a server means every channel.
CREATE TABLE channel_rules (
    platform TEXT NOT NULL,
    guild_id TEXT NOT NULL,
    channel_id TEXT NOT NULL,
    PRIMARY KEY (platform, guild_id, channel_id)
);
