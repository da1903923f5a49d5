use secrecy::{ExposeSecret, SecretString};
use unicode_normalization::UnicodeNormalization;
use zxcvbn::matching::patterns::MatchPattern;

use super::{FieldReason, Invalid};

/// A password after NFKC normalisation, so that every Unicode form of the
/// same text hashes alike. Kept in a `SecretString`: it never prints.
#[derive(Clone)]
pub struct Password(SecretString);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password([REDACTED])")
    }
}

/// Upper bound on what authd accepts, in code points (NIST SP 800-63B asks
/// for at least 64).
pub const MAX_PASSWORD_CHARS: usize = 128;
/// Estimated guesses a new password must withstand.
const MIN_GUESSES: u64 = 1_000_000;
/// zxcvbn reads at most this many code points at a time. Its cost grows
/// faster than the length (0.25-0.35 ms at 24, 0.6-1 ms at 32, 3 ms at 57,
/// 13 ms at 120 on the benchmark machine) while what it looks for is short:
/// the longest entry of its dictionaries has 23 characters. See
/// [`Strength`].
const ESTIMATED_CHARS: usize = 24;
/// How far zxcvbn reads on when a keyboard walk or a sequence fills a
/// whole read: a walk weak enough to matter (at most two turns) is shorter.
const WIDE_CHARS: usize = 40;
/// The most l33t substitution tables one read may make zxcvbn try. A
/// word needing more is long and mangled enough to pass the floor on its
/// l33t variations alone.
const L33T_SUBSTITUTIONS: usize = 8;
/// Repeats at least this long are scored as zxcvbn scores a repeat; shorter
/// ones (the `ll` of a word) are left to zxcvbn in the text around them.
const REPEAT_MIN_CHARS: usize = 8;
/// Raw input larger than this cannot be 128 code points even after NFKC
/// expansion is undone, so it is refused before any normalisation work.
const MAX_PASSWORD_BYTES: usize = MAX_PASSWORD_CHARS * 4;

impl Password {
    /// Normalises without applying the policy: used for the password of a
    /// Login, which must match whatever the policy was when it was set.
    pub fn normalize(input: &str) -> Result<Self, Invalid> {
        if input.is_empty() {
            return Err(Invalid::required());
        }
        if input.len() > MAX_PASSWORD_BYTES {
            return Err(Invalid::too_long(format!(
                "must be at most {MAX_PASSWORD_CHARS} characters"
            )));
        }
        let normalized: String = input.nfkc().collect();
        if normalized.chars().count() > MAX_PASSWORD_CHARS {
            return Err(Invalid::too_long(format!(
                "must be at most {MAX_PASSWORD_CHARS} characters"
            )));
        }
        Ok(Self(SecretString::from(normalized)))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    pub fn char_count(&self) -> usize {
        self.expose().chars().count()
    }
}

/// What a new password must satisfy (NIST SP 800-63B: length and a block
/// list, no composition rules).
#[derive(Debug, Clone)]
pub struct PasswordPolicy {
    pub min_chars: usize,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self { min_chars: 8 }
    }
}

impl PasswordPolicy {
    /// Loads the strength estimator's dictionaries (tens of milliseconds,
    /// once) so the first Register does not pay for it.
    pub fn warm_up() {
        let _ = zxcvbn::zxcvbn("warm up the dictionaries", &[]);
    }

    /// Parses and checks a new password. `identifiers` are the account's
    /// email and username, which a password must not equal or contain.
    pub fn parse_new(&self, input: &str, identifiers: &[&str]) -> Result<Password, Invalid> {
        let password = Password::normalize(input)?;
        let chars = password.char_count();
        if chars < self.min_chars {
            return Err(Invalid::new(
                FieldReason::TooShort,
                format!(
                    "must be at least {} characters (a few unrelated words make a strong, memorable password)",
                    self.min_chars
                ),
            ));
        }
        let lower = password.expose().to_lowercase();
        for id in identifiers.iter().filter(|id| !id.is_empty()) {
            let id = id.to_lowercase();
            let local = id.split('@').next().unwrap_or_default();
            if lower.contains(&id) || (local.chars().count() >= 4 && lower.contains(local)) {
                return Err(Invalid::new(
                    FieldReason::ContainsIdentifier,
                    "must not contain your email address or username",
                ));
            }
        }
        // The blocklist: zxcvbn's dictionaries of common and leaked passwords,
        // names and words, with l33t, keyboard-pattern, repeat and sequence
        // detection. Below a million guesses a password falls to a throttled
        // online attack, so it is refused (NIST SP 800-63B 3.1.1.2).
        let strength = Strength::of(password.expose(), identifiers);
        if strength.guesses < MIN_GUESSES {
            let hint = strength.warning.map(|w| format!(" ({w})")).unwrap_or_default();
            return Err(Invalid::new(
                FieldReason::TooCommon,
                format!(
                    "is too easy to guess{hint}; a few unrelated words make a strong, memorable password"
                ),
            ));
        }
        Ok(password)
    }
}

/// zxcvbn's estimate, or None where it cannot make one: its keyboard-walk
/// arithmetic overflows (a panic where overflow checks are on) on a walk
/// with some thirty turns, and a password like that is refused.
fn estimate(text: &str, identifiers: &[&str]) -> Option<zxcvbn::Entropy> {
    std::panic::catch_unwind(|| zxcvbn::zxcvbn(text, identifiers)).ok()
}

/// The strength estimate of a password, made to agree with zxcvbn's
/// estimate of the whole password while zxcvbn itself reads at most
/// [`WIDE_CHARS`] code points at a time.
///
/// zxcvbn scores a password as its cheapest cover by matches m₁…mₗ:
/// l!·∏guesses(mᵢ) + 10⁴⁽ˡ⁻¹⁾ (the last term 1 when l = 1), where a match
/// shorter than the password counts at least 10 guesses (one character) or
/// 50. Three matches cost over 10⁸, so a password under the floor is one or
/// two matches. Of zxcvbn's patterns only a repeat and a sequence can be
/// weak and much longer than [`ESTIMATED_CHARS`]: dictionary entries have
/// at most 23 characters, and a keyboard walk needs more turns, each
/// multiplying its guesses, the longer it runs. So the password is cut into
/// pieces: repeats found as zxcvbn's repeat scan finds them (a unit repeated
/// whole, leftmost first, the longer of the shortest and the longest unit),
/// each scored as its unit's estimate times the copies; sequences of
/// constant step longer than [`ESTIMATED_CHARS`], scored by zxcvbn's rule;
/// and the text between them, read [`ESTIMATED_CHARS`] at a time, each read
/// keeping every match but the last, which the next read starts with so
/// that no word is cut (a read that one walk or sequence fills entirely is
/// read again [`WIDE_CHARS`] wide). The matches are then combined with
/// zxcvbn's own formula above. Guesses only grow as matches are added, so
/// reading stops once the floor is passed: a long strong password costs
/// one read. A read dense in l33t symbols is cut shorter (see
/// [`l33t_bounded_end`]), so no read costs more than about a plain one
/// times [`L33T_SUBSTITUTIONS`].
///
/// Agreement, property-tested below in both directions on near-periodic
/// passwords, strong phrases with weak padding and any mix of repeated
/// strong and weak pieces: the same verdict as the
/// whole estimate except within a factor of 10 of the floor (10⁵ to 10⁷
/// guesses). It can be stricter where zxcvbn's scanners overlook a pattern
/// because an overlapping match took its first characters (in
/// `abcdefghijklmnopqwertyqwerty` the sequence takes the `q` the repeat
/// starts with): each piece is read afresh and the pattern is found. It
/// reads all 128 code points where zxcvbn reads the first 100.
struct Strength {
    guesses: u64,
    warning: Option<zxcvbn::feedback::Warning>,
    /// The longest text given to zxcvbn, which bounds the cost.
    longest_read: usize,
}

impl Strength {
    fn of(password: &str, identifiers: &[&str]) -> Self {
        let chars: Vec<char> = password.chars().collect();
        let mut strength = Self {
            guesses: 0,
            warning: None,
            longest_read: 0,
        };
        // None: zxcvbn could not score some part, and the password is refused.
        strength.guesses = strength.guesses(&chars, identifiers).unwrap_or(0);
        strength
    }

    fn read(&mut self, chars: &[char], identifiers: &[&str]) -> Option<zxcvbn::Entropy> {
        self.longest_read = self.longest_read.max(chars.len());
        let text: String = chars.iter().collect();
        let entropy = estimate(&text, identifiers)?;
        if self.warning.is_none() {
            self.warning = entropy.feedback().and_then(|f| f.warning());
        }
        Some(entropy)
    }

    fn guesses(&mut self, chars: &[char], identifiers: &[&str]) -> Option<u64> {
        if chars.len() <= ESTIMATED_CHARS && l33t_substitutions(chars) <= L33T_SUBSTITUTIONS {
            return self.read(chars, identifiers).map(|e| e.guesses());
        }
        let mut matches = Vec::new();
        for piece in pieces(chars) {
            match piece {
                Piece::Repeat { start, unit, copies } => {
                    let base = self.guesses(&chars[start..start + unit], identifiers)?;
                    self.warning = Some(if unit == 1 {
                        zxcvbn::feedback::Warning::RepeatsLikeAaaAreEasyToGuess
                    } else {
                        zxcvbn::feedback::Warning::RepeatsLikeAbcAbcAreOnlySlightlyHarderToGuess
                    });
                    matches.push(Scored {
                        guesses: base.saturating_mul(u64::try_from(copies).unwrap_or(u64::MAX)),
                        chars: unit * copies,
                        bruteforce: false,
                    });
                }
                Piece::Sequence { start, end } => {
                    self.warning = Some(zxcvbn::feedback::Warning::SequencesLikeAbcAreEasyToGuess);
                    matches.push(Scored {
                        guesses: sequence_guesses(&chars[start..end]),
                        chars: end - start,
                        bruteforce: false,
                    });
                }
                Piece::Other { start, end } => {
                    let text = &chars[start..end];
                    let mut at = 0;
                    while at < text.len() {
                        at = self.read_on(text, at, identifiers, &mut matches)?;
                        if combined(&matches) >= MIN_GUESSES {
                            return Some(combined(&matches));
                        }
                    }
                }
            }
            if combined(&matches) >= MIN_GUESSES {
                return Some(combined(&matches));
            }
        }
        Some(combined(&matches))
    }

    /// Reads `text` from `at`, adds the matches it keeps and tells where
    /// the next read starts.
    fn read_on(
        &mut self,
        text: &[char],
        at: usize,
        identifiers: &[&str],
        matches: &mut Vec<Scored>,
    ) -> Option<usize> {
        let mut end = l33t_bounded_end(text, at, ESTIMATED_CHARS);
        let mut entropy = self.read(&text[at..end], identifiers)?;
        if end < text.len()
            && let [only] = entropy.sequence()
            && !matches!(only.pattern, MatchPattern::BruteForce)
        {
            end = l33t_bounded_end(text, at, WIDE_CHARS);
            entropy = self.read(&text[at..end], identifiers)?;
        }
        let sequence = entropy.sequence();
        // The last match may go on past the end of what was read, unless
        // it is all there is (then the read moves on by its length).
        let kept = match sequence {
            [_, _, ..] if end < text.len() => sequence.len() - 1,
            _ => sequence.len(),
        };
        for m in &sequence[..kept] {
            matches.push(Scored {
                guesses: m.guesses.unwrap_or(0),
                chars: m.j + 1 - m.i,
                bruteforce: matches!(m.pattern, MatchPattern::BruteForce),
            });
        }
        Some(match sequence.get(kept) {
            Some(next) => at + next.i,
            None => end,
        })
    }
}

/// zxcvbn's l33t table: the symbols it reads as each letter.
const L33T_TABLE: &[(char, &[char])] = &[
    ('a', &['4', '@']),
    ('b', &['8']),
    ('c', &['(', '{', '[', '<']),
    ('e', &['3']),
    ('g', &['6', '9']),
    ('i', &['1', '!', '|']),
    ('l', &['1', '|', '7']),
    ('o', &['0']),
    ('s', &['$', '5']),
    ('t', &['+', '7']),
    ('x', &['%']),
    ('z', &['2']),
];

/// How many substitution tables zxcvbn's l33t matcher tries on `text`: for
/// each letter, one per symbol for it present in `text`. It runs its whole
/// dictionary scan once per table, so a read's cost is this times the
/// cost of a plain read (about 40 µs a table at 24 code points).
fn l33t_substitutions(text: &[char]) -> usize {
    L33T_TABLE.iter().fold(1usize, |tables, (_, symbols)| {
        let present = symbols.iter().filter(|s| text.contains(s)).count();
        tables.saturating_mul(present.max(1))
    })
}

/// Where a read from `at`, at most `width` long, ends so that zxcvbn's
/// l33t matcher tries at most [`L33T_SUBSTITUTIONS`] tables on it: text
/// dense in symbols is read in shorter pieces (still cut only between
/// matches, see [`Strength::read_on`]). Never less than one code point.
fn l33t_bounded_end(text: &[char], at: usize, width: usize) -> usize {
    let mut end = (at + width).min(text.len());
    while end > at + 1 && l33t_substitutions(&text[at..end]) > L33T_SUBSTITUTIONS {
        end -= 1;
    }
    end
}

/// One match of the cover, as zxcvbn scores it.
#[derive(Debug, Clone, Copy)]
struct Scored {
    guesses: u64,
    chars: usize,
    bruteforce: bool,
}

/// zxcvbn's score of a cover by these matches: adjacent random stretches
/// are one (10 guesses a character), a match shorter than the password
/// counts at least 10 or 50 guesses, then l!·∏guesses + 10⁴⁽ˡ⁻¹⁾.
fn combined(matches: &[Scored]) -> u64 {
    let mut merged: Vec<Scored> = Vec::with_capacity(matches.len());
    for m in matches {
        match merged.last_mut() {
            Some(last) if last.bruteforce && m.bruteforce => {
                last.chars += m.chars;
                last.guesses = 10u64
                    .saturating_pow(u32::try_from(last.chars).unwrap_or(u32::MAX))
                    .max(51);
            }
            _ => merged.push(*m),
        }
    }
    let count = merged.len();
    if count == 0 {
        return 0;
    }
    let product = merged.iter().fold(1u64, |product, m| {
        let least = match (count, m.chars) {
            (1, _) => 1,
            (_, 1) => 10,
            _ => 50,
        };
        product.saturating_mul(m.guesses.max(least))
    });
    let count = u64::try_from(count).unwrap_or(u64::MAX);
    let factorial = (1..=count).fold(1u64, u64::saturating_mul);
    let additive = if count == 1 {
        1
    } else {
        10_000u64.saturating_pow(u32::try_from(count - 1).unwrap_or(u32::MAX))
    };
    factorial.saturating_mul(product).saturating_add(additive)
}

/// zxcvbn's guesses for a sequence: a base by its first character (4 for
/// an obvious start, 10 for a digit, 26 otherwise), doubled when it
/// descends, times its length.
fn sequence_guesses(run: &[char]) -> u64 {
    let (Some(&first), Some(&second)) = (run.first(), run.get(1)) else {
        return 0;
    };
    let mut base = if ['a', 'A', 'z', 'Z', '0', '1', '9'].contains(&first) {
        4
    } else if first.is_ascii_digit() {
        10
    } else {
        26
    };
    if second < first {
        base *= 2;
    }
    base * u64::try_from(run.len()).unwrap_or(u64::MAX)
}

/// A stretch of the password scored on its own.
#[derive(Debug, PartialEq)]
enum Piece {
    Repeat {
        start: usize,
        unit: usize,
        copies: usize,
    },
    Sequence {
        start: usize,
        end: usize,
    },
    Other {
        start: usize,
        end: usize,
    },
}

/// Repeats of at least [`REPEAT_MIN_CHARS`] and sequences longer than
/// [`ESTIMATED_CHARS`] or than a repeat they overlap (where they overlap,
/// the longer: zxcvbn's sequence scan runs a repeated character on into
/// the step after it, `111111111111-`, and scores that run far lower than
/// the repeat and the character apart), and the text between them.
/// Shorter ones stay in the text, where zxcvbn finds them next to the
/// words they may belong to.
fn pieces(chars: &[char]) -> Vec<Piece> {
    let repeated: Vec<(usize, usize, Piece)> = repeats(chars)
        .into_iter()
        .filter(|&(_, unit, copies)| unit * copies >= REPEAT_MIN_CHARS)
        .map(|(start, unit, copies)| {
            (
                start,
                start + unit * copies,
                Piece::Repeat { start, unit, copies },
            )
        })
        .collect();
    let outruns_a_repeat = |start: usize, end: usize| {
        repeated
            .iter()
            .any(|&(s, e, _)| start < e && s < end && end - start > e - s)
    };
    let sequences: Vec<(usize, usize, Piece)> = sequence_runs(chars)
        .into_iter()
        .filter(|&(start, end)| end - start > ESTIMATED_CHARS || outruns_a_repeat(start, end))
        .map(|(start, end)| (start, end, Piece::Sequence { start, end }))
        .collect();
    let mut found = repeated;
    found.extend(sequences);
    found.sort_by_key(|&(start, _, _)| start);
    let mut chosen: Vec<(usize, usize, Piece)> = Vec::new();
    for (start, end, piece) in found {
        match chosen.last() {
            Some(&(s, e, _)) if start < e => {
                if end - start > e - s {
                    chosen.pop();
                    chosen.push((start, end, piece));
                }
            }
            _ => chosen.push((start, end, piece)),
        }
    }
    let mut pieces = Vec::new();
    let mut at = 0;
    for (start, end, piece) in chosen {
        if start < at {
            continue;
        }
        if start > at {
            pieces.push(Piece::Other {
                start: at,
                end: start,
            });
        }
        pieces.push(piece);
        at = end;
    }
    if at < chars.len() {
        pieces.push(Piece::Other {
            start: at,
            end: chars.len(),
        });
    }
    pieces
}

/// Runs of one step of at most 5 between code points, as zxcvbn's
/// sequence scan cuts them (a run of equal characters takes the step that
/// follows it), as half-open ranges.
fn sequence_runs(chars: &[char]) -> Vec<(usize, usize)> {
    let step = |k: usize| i64::from(u32::from(chars[k])) - i64::from(u32::from(chars[k - 1]));
    let mut runs = Vec::new();
    let mut start = 0;
    let mut last = 0i64;
    for k in 1..chars.len() {
        let delta = step(k);
        if last == 0 {
            last = delta;
        }
        if last == delta {
            continue;
        }
        if (1..=5).contains(&last.abs()) {
            runs.push((start, k));
        }
        start = k - 1;
        last = delta;
    }
    if (1..=5).contains(&last.abs()) {
        runs.push((start, chars.len()));
    }
    runs
}

/// Repeats as zxcvbn's repeat scan finds them: from the leftmost place
/// where some unit is followed by a copy of itself, the longer of what
/// the shortest and the longest such unit cover (the longest one's own
/// shortest whole unit then being the unit), and on from its end.
/// Returned as (start, unit length, copies).
fn repeats(chars: &[char]) -> Vec<(usize, usize, usize)> {
    let n = chars.len();
    let copies = |at: usize, unit: usize| {
        let mut copies = 1;
        while at + (copies + 1) * unit <= n
            && chars[at..at + unit] == chars[at + copies * unit..at + (copies + 1) * unit]
        {
            copies += 1;
        }
        copies
    };
    let mut found = Vec::new();
    let mut from = 0;
    while from < n {
        let leftmost = (from..n).find_map(|start| {
            let longest = (1..=(n - start) / 2)
                .rev()
                .find(|&unit| copies(start, unit) >= 2)?;
            let shortest = (1..=longest).find(|&unit| copies(start, unit) >= 2)?;
            Some((start, longest, shortest))
        });
        let Some((start, longest, shortest)) = leftmost else {
            break;
        };
        let greedy = longest * copies(start, longest);
        let lazy = shortest * copies(start, shortest);
        let (covered, unit) = if greedy > lazy {
            let unit = (1..=greedy)
                .find(|&unit| greedy % unit == 0 && unit * copies(start, unit) >= greedy)
                .unwrap_or(greedy);
            (greedy, unit)
        } else {
            (lazy, shortest)
        };
        found.push((start, unit, covered / unit));
        from = start + covered;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nfkc_makes_equivalent_forms_equal() {
        // "ﬁ" ligature and full-width letters normalise to ASCII.
        let a = Password::normalize("ﬁnance Ｐａｓｓ").map(|p| p.expose().to_owned());
        assert_eq!(a, Ok("finance Pass".to_owned()));
        // Composed and decomposed é are one password.
        let composed = Password::normalize("caf\u{e9}-secret").map(|p| p.expose().to_owned());
        let decomposed = Password::normalize("cafe\u{301}-secret").map(|p| p.expose().to_owned());
        assert_eq!(composed, decomposed);
    }

    #[test]
    fn length_is_counted_in_code_points() {
        let policy = PasswordPolicy::default();
        assert!(policy.parse_new("äöüßéñçå", &[]).is_ok());
        assert!(policy.parse_new("äöüßéñç", &[]).is_err());
        // 128 distinct CJK ideographs: long, and no pattern zxcvbn objects to.
        let long: String = (0..128u32)
            .filter_map(|i| char::from_u32(0x4E00 + i * 37))
            .collect();
        assert!(policy.parse_new(&long, &[]).is_ok());
        assert!(policy.parse_new(&format!("{long}x"), &[]).is_err());
        assert!(Password::normalize(&"a".repeat(1_000_000)).is_err());
        assert!(Password::normalize("").is_err());
    }

    #[test]
    fn common_and_personal_passwords_are_refused() {
        let policy = PasswordPolicy::default();
        for common in [
            "Password1",
            "qwertyuiop",
            "iloveyou",
            "aaaaaaaaaaaa",
            "12345678910",
            "P@ssw0rd123",
            "abcdefghijk",
        ] {
            assert!(policy.parse_new(common, &[]).is_err(), "{common}");
        }
        assert!(
            policy
                .parse_new("alice.smith-2024", &["alice.smith@example.com"])
                .is_err()
        );
        assert!(policy.parse_new("xx-bobby99-xx", &["a@b.co", "bobby99"]).is_err());
        assert!(
            policy
                .parse_new("correct horse battery", &["alice@example.com"])
                .is_ok()
        );
    }

    #[test]
    fn the_estimate_reads_bounded_pieces_and_the_identifier_check_the_whole() {
        let policy = PasswordPolicy::default();
        let chars = |text: &str| text.chars().collect::<Vec<_>>();
        // Forty copies of one character: one repeat of the unit "ä".
        assert_eq!(
            pieces(&chars(&"ä".repeat(40))),
            vec![Piece::Repeat {
                start: 0,
                unit: 1,
                copies: 40
            }]
        );
        // One character more does not hide the repeat.
        assert_eq!(
            pieces(&chars("1letmeinletmeinletmeinletmein")),
            vec![
                Piece::Other { start: 0, end: 1 },
                Piece::Repeat {
                    start: 1,
                    unit: 7,
                    copies: 4
                }
            ]
        );
        // Like zxcvbn: the longer of the shortest and the longest unit.
        assert_eq!(repeats(&chars("aabaabaab")), vec![(0, 3, 3)]);
        assert_eq!(repeats(&chars("aaaaa")), vec![(0, 1, 5)]);
        // A run of equal characters takes the step that follows it.
        assert_eq!(sequence_runs(&chars("-1111-")), vec![(0, 2), (1, 6)]);
        for long in WORST_CASES.iter().map(|make| make(MAX_PASSWORD_CHARS)) {
            assert!(Strength::of(&long, &[]).longest_read <= WIDE_CHARS, "{long}");
        }
        // A run of one letter next to a strong part is one more match, as
        // in the estimate of the whole: it does not make the password weak.
        let strong_tail = "x7#Qv9!mZ2@kL4$p";
        assert!(
            policy
                .parse_new(&format!("{}{strong_tail}", "a".repeat(40)), &[])
                .is_ok()
        );
        assert!(
            policy
                .parse_new(&format!("{strong_tail}{}", "a".repeat(40)), &[])
                .is_ok()
        );
        // An identifier past the first read is still found.
        let strong = "tulip orbit canyon mosaic lantern and a quiet harbour";
        assert!(policy.parse_new(strong, &[]).is_ok());
        let middle = "tulip orbit canyon jdoe.smith mosaic lantern and a quiet harbour";
        assert!(policy.parse_new(middle, &["jdoe.smith@example.com"]).is_err());
    }

    /// Inputs that make the estimate work hardest, by length: random
    /// characters, keyboard walks, repeats, a sequence, and symbols that
    /// zxcvbn's l33t matcher reads as many letters (its cost grows with
    /// the number of substitution tables they allow).
    const WORST_CASES: &[fn(usize) -> String] = &[
        |n| cycle("x7#Qv9!mZ2@kL4$pRt8&wNbY3^cF6*hJ1%dS5+gU0(eAuT", n),
        |n| cycle("qwertyuiop[]asdfghjkl;zxcvbnm,./", n),
        |n| cycle("1qaz2wsx3edc4rfv5tgb6yhn7ujm8ik,9ol.0p;/", n),
        |n| cycle("qwertyuiopoiuytrewq", n),
        |n| cycle("a", n),
        |n| cycle("abc123", n),
        |n| format!("{}1", cycle("letmein", n - 1)),
        |n| cycle("abcdefghijklmnopqrstuvwxyz", n),
        |n| cycle("tulip orbit canyon mosaic lantern quiet harbour ", n),
        |n| cycle("!@#$%^&*()_+1234567890-=", n),
        |n| cycle("4@8({[<369!|70$5+%2", n),
    ];

    fn cycle(text: &str, n: usize) -> String {
        text.chars().cycle().take(n).collect()
    }

    /// Prints what one strength check costs (`--nocapture`); timings are
    /// not asserted, the verdict is: it must not change between calls.
    #[test]
    fn strength_check_cost_by_length() {
        let policy = PasswordPolicy::default();
        PasswordPolicy::warm_up();
        for make in WORST_CASES {
            for n in [24, 64, MAX_PASSWORD_CHARS] {
                let password = make(n);
                let verdict = policy.parse_new(&password, &[]).is_ok();
                let mut costs: Vec<_> = (0..5)
                    .map(|_| {
                        let started = std::time::Instant::now();
                        let again = policy.parse_new(&password, &[]).is_ok();
                        assert_eq!(again, verdict, "{password}");
                        started.elapsed()
                    })
                    .collect();
                costs.sort();
                println!(
                    "{n:>4} chars {:>10.3?} {} {password}",
                    costs[costs.len() / 2],
                    if verdict { "accepted" } else { "refused " }
                );
            }
        }
    }

    #[test]
    fn a_long_password_made_of_one_repeated_phrase_is_refused() {
        let policy = PasswordPolicy::default();
        for unit in ["iloveyou123456", "password-", "zaq12wsx", "abc123 "] {
            let long = unit.repeat(6);
            assert!(policy.parse_new(&long, &[]).is_err(), "{long}");
        }
    }

    #[test]
    fn a_weak_unit_repeated_with_a_character_more_is_refused() {
        let policy = PasswordPolicy::default();
        for near_periodic in [
            "adminadminadminadminadmin1",
            "1letmeinletmeinletmeinletmein",
            "master1master1master1master1!",
        ] {
            let whole = estimate(near_periodic, &[]).map_or(0, |e| e.guesses());
            assert!(whole < MIN_GUESSES, "{near_periodic}: {whole}");
            assert!(policy.parse_new(near_periodic, &[]).is_err(), "{near_periodic}");
        }
    }

    #[test]
    fn a_repeated_character_running_into_a_step_is_one_weak_sequence() {
        // zxcvbn reads `111111111111-` as one descending sequence (104
        // guesses), not a repeat and a character: the whole is 20 400.
        let weak = "111111111111-passwordpassword";
        let whole = estimate(weak, &[]).map_or(u64::MAX, |e| e.guesses());
        assert!(whole < MIN_GUESSES / 10, "{weak}: {whole}");
        assert!(PasswordPolicy::default().parse_new(weak, &[]).is_err(), "{weak}");
    }

    #[test]
    fn a_strong_phrase_padded_with_one_repeated_letter_is_accepted() {
        let policy = PasswordPolicy::default();
        let phrase = "correct horse battery";
        for padded in [
            format!("{phrase}{}", "a".repeat(42)),
            format!("{}{phrase}", "z".repeat(42)),
        ] {
            let whole = estimate(&padded, &[]).map_or(0, |e| e.guesses());
            assert!(whole >= MIN_GUESSES, "{padded}: {whole}");
            assert!(policy.parse_new(&padded, &[]).is_ok(), "{padded}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("PASSWORD_PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(48)
        ))]
        /// Long passwords built from weak pieces (common passwords, words,
        /// walks, sequences) and repeats of them: whenever the estimate of
        /// the whole password refuses one, this estimate refuses it too.
        /// Only this direction: joined pieces are where zxcvbn's scanners
        /// overlook a pattern that an overlapping match started on, and
        /// this estimate, reading each piece afresh, may refuse what the
        /// whole estimate overrates (see [`Strength`]).
        #[test]
        fn the_estimate_refuses_every_long_password_the_whole_estimate_refuses(
            pieces in proptest::collection::vec(proptest::sample::select(WEAK_PIECES), 1..6),
            repeats in 1..10usize,
            separator in proptest::sample::select(&["", " ", "-", "1", "."][..]),
        ) {
            let unit = pieces.join(separator);
            // Long enough to need windows, cut to the 100 code points
            // zxcvbn reads (past them its verdict says nothing of the rest:
            // `password1qaz2wsx3edc` seven times is weak in its first 100
            // and one match stronger at 128).
            let mut candidate = vec![unit.as_str(); repeats].join(separator);
            while candidate.chars().count() <= ESTIMATED_CHARS {
                candidate = format!("{candidate}{separator}{unit}");
            }
            let candidate: String = candidate.chars().take(100).collect();
            let whole = estimate(&candidate, &[]);
            proptest::prop_assume!(whole.is_some());
            if whole.is_some_and(|e| e.guesses() < MIN_GUESSES) {
                proptest::prop_assert!(PasswordPolicy::default().parse_new(&candidate, &[]).is_err());
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("PASSWORD_PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(64)
        ))]
        /// A common password or word (or two) repeated, with up to three
        /// characters before and after it: refused and accepted as the
        /// estimate of the whole password refuses and accepts it.
        #[test]
        fn near_periodic_passwords_are_judged_as_the_whole_estimate_judges_them(
            unit in proptest::collection::vec(proptest::sample::select(WEAK_PIECES), 1..3),
            copies in 2..12usize,
            before in proptest::collection::vec(proptest::sample::select(PADDING), 0..4),
            after in proptest::collection::vec(proptest::sample::select(PADDING), 0..4),
        ) {
            let candidate = format!(
                "{}{}{}",
                before.concat(),
                unit.concat().repeat(copies),
                after.concat()
            );
            agrees_with_the_whole_estimate(&candidate)?;
        }

        /// A long strong phrase with weak padding (one character repeated,
        /// or a common password repeated) before it, after it or both.
        #[test]
        fn strong_phrases_with_weak_padding_are_judged_as_the_whole_estimate_judges_them(
            phrase in proptest::sample::select(STRONG_PHRASES),
            letter in proptest::sample::select(PADDING),
            letters in 1..60usize,
            weak in proptest::sample::select(WEAK_PIECES),
            copies in 1..6usize,
            layout in 0..6u8,
        ) {
            let repeated_letter = letter.repeat(letters);
            let repeated_weak = weak.repeat(copies);
            let candidate = match layout {
                0 => format!("{phrase}{repeated_letter}"),
                1 => format!("{repeated_letter}{phrase}"),
                2 => format!("{repeated_letter}{phrase}{repeated_letter}"),
                3 => format!("{phrase}{repeated_weak}"),
                4 => format!("{repeated_weak}{phrase}"),
                _ => format!("{repeated_weak}{phrase}{repeated_letter}"),
            };
            agrees_with_the_whole_estimate(&candidate)?;
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("PASSWORD_PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(96)
        ))]
        /// Long passwords built from strong and weak pieces, each repeated
        /// up to seven times, joined by a separator: the shapes an attacker
        /// picks to fool a windowed estimate (a repeated word plus one
        /// character, a repeated phrase, a weak prefix or suffix around a
        /// strong core) and any mix of them. Judged as the estimate of the
        /// whole password judges them, in both directions, within
        /// [`TOLERANCE`] of the floor.
        #[test]
        fn long_passwords_of_strong_and_weak_pieces_are_judged_as_the_whole_estimate_judges_them(
            parts in proptest::collection::vec(
                (
                    proptest::prop_oneof![
                        proptest::sample::select(STRONG_PHRASES),
                        proptest::sample::select(WEAK_PIECES),
                        proptest::sample::select(PADDING),
                    ],
                    1..8usize,
                ),
                1..5,
            ),
            separator in proptest::sample::select(&["", " ", "-", "1", "."][..]),
        ) {
            let parts: Vec<String> = parts.iter().map(|(piece, copies)| piece.repeat(*copies)).collect();
            let candidate = parts.join(separator);
            proptest::prop_assume!(candidate.chars().count() > ESTIMATED_CHARS);
            // Where each part starts, and where its separator does.
            let mut splits = Vec::new();
            let mut at = 0;
            for part in &parts {
                splits.extend([at, at + part.chars().count()]);
                at += part.chars().count() + separator.chars().count();
            }
            agrees_with_the_whole_estimate_split(&candidate, &splits)?;
        }
    }

    /// How far from [`MIN_GUESSES`] the estimate may judge a password
    /// otherwise than zxcvbn's estimate of the whole password.
    const TOLERANCE: u64 = 10;

    /// Checks both directions on the first 100 code points, all that
    /// zxcvbn reads of a password.
    fn agrees_with_the_whole_estimate(candidate: &str) -> Result<(), proptest::test_runner::TestCaseError> {
        agrees_with_the_whole_estimate_split(candidate, &[])
    }

    /// As above; a refusal of what the whole estimate rates strong is
    /// allowed only where zxcvbn itself, reading the password cut in two
    /// at one of `splits` (code points), scores the halves as two matches
    /// under the floor (2·g₁·g₂ + 10⁴ < 10⁶/[`TOLERANCE`]): zxcvbn's scan
    /// of the whole overlooks a pattern that a match running across the
    /// cut took the start of (`111111111111123456123456`), and this
    /// estimate, reading each piece afresh, finds it.
    fn agrees_with_the_whole_estimate_split(
        candidate: &str,
        splits: &[usize],
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        let candidate: String = candidate.chars().take(100).collect();
        let whole = estimate(&candidate, &[]);
        proptest::prop_assume!(whole.is_some());
        let whole = whole.map_or(0, |e| e.guesses());
        let accepted = PasswordPolicy::default().parse_new(&candidate, &[]).is_ok();
        if whole < MIN_GUESSES / TOLERANCE {
            proptest::prop_assert!(!accepted, "accepted {candidate:?}, whole estimate {whole}");
        }
        if whole > MIN_GUESSES.saturating_mul(TOLERANCE) && !accepted {
            let chars: Vec<char> = candidate.chars().collect();
            let halves_weak = splits
                .iter()
                .filter(|&&at| 0 < at && at < chars.len())
                .any(|&at| {
                    let half = |part: &[char]| {
                        estimate(&part.iter().collect::<String>(), &[]).map_or(0, |e| e.guesses())
                    };
                    let split = 2u64
                        .saturating_mul(half(&chars[..at]))
                        .saturating_mul(half(&chars[at..]))
                        .saturating_add(10_000);
                    split < MIN_GUESSES / TOLERANCE
                });
            proptest::prop_assert!(halves_weak, "refused {candidate:?}, whole estimate {whole}");
        }
        Ok(())
    }

    const PADDING: &[&str] = &["a", "1", "!", "x", "0", "z", "?", ".", "-", "9", "Q", " "];

    const STRONG_PHRASES: &[&str] = &[
        "correct horse battery",
        "tulip orbit canyon mosaic",
        "glacier spoon velvet harbour",
        "x7#Qv9!mZ2@kL4$p",
        "crimson ferry oboe kettle",
        "purple-violin-88-sandwich",
        "quiet lantern, a mosaic of rain",
        "Wq8#zL2!rT mj3K!9vPq",
    ];

    const WEAK_PIECES: &[&str] = &[
        "password",
        "123456",
        "qwerty",
        "iloveyou",
        "dragon",
        "monkey",
        "aaaaaa",
        "abcdef",
        "asdfgh",
        "zxcvbn",
        "111111",
        "letmein",
        "2024",
        "1990",
        "admin",
        "welcome",
        "the",
        "football",
        "qwertyuiop",
        "abc123",
        "sunshine",
        "princess",
        "passw0rd",
        "p@ssword",
        "qwertyuiopasdfghjkl",
        "1234567890",
        "abcdefghijklmnop",
        "zaq12wsx",
        "1qaz2wsx3edc",
        "p@$$w0rd",
        "!@#$%^&*",
        "l0v3|y0u!",
    ];

    #[test]
    fn debug_never_shows_the_secret() {
        let p = Password::normalize("hunter2-secret").map(|p| format!("{p:?}"));
        assert_eq!(p.as_deref(), Ok("Password([REDACTED])"));
    }
}
