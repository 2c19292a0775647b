-- Binary content stored apart from the Binary's JSON (ADR 11): once per distinct content (by
-- SHA-256, hex), decoded, in chunks of 256 KiB numbered from 0. Resource rows name it.
CREATE TABLE binary_content (
    sha256 TEXT NOT NULL,
    seq BIGINT NOT NULL,
    chunk BYTEA NOT NULL,
    PRIMARY KEY (sha256, seq)
);
-- Documents and images are compressed already: stored out of line without compressing again.
ALTER TABLE binary_content ALTER COLUMN chunk SET STORAGE EXTERNAL;
