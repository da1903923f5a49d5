-- One account per address in any letter case, non-ASCII letters included.
-- lower() follows the database's LC_CTYPE, and under the C locale (what
-- authd's own clusters use, and many managed databases) it folds only A-Z,
-- so 'JÖRG@…' and 'jörg@…' were two accounts. The ICU root collation folds
-- every script the same way on every server (PostgreSQL built with ICU, as
-- the Debian, Ubuntu and official Docker packages are).
DROP INDEX users_email_key;
CREATE UNIQUE INDEX users_email_key ON users (lower(email COLLATE "und-x-icu"));
