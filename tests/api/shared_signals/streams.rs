//! Stream management: who may see which stream, what a configuration may
//! hold, the SSRF guard at configuration time, status and verification.
