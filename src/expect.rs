//! The `expect` forms of `[verify] queries` and the `read_data` share: pure, validated when the
//! policy loads, evaluated by verify.
//!
//! A query's result is the first column of its rows. `empty` / `not empty` test the number of
//! rows; the comparisons (`> N`, `>= N`, `= N`, `!= N`, `< N`, `<= N`, `between A and B`,
//! inclusive) need exactly one row whose value is a number.

#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    Compare(Op, f64),
    Between(f64, f64),
    Empty,
    NotEmpty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Gt,
    Ge,
    Eq,
    Ne,
    Lt,
    Le,
}

pub fn parse_expect(text: &str) -> Result<Expect, String> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    if lower == "empty" {
        return Ok(Expect::Empty);
    }
    if lower == "not empty" {
        return Ok(Expect::NotEmpty);
    }
    let number = |s: &str| -> Result<f64, String> {
        s.trim()
            .parse::<f64>()
            .map_err(|_| format!("`{text}`: `{}` is not a number", s.trim()))
    };
    if let Some(rest) = lower.strip_prefix("between ") {
        let (a, b) = rest
            .split_once(" and ")
            .ok_or_else(|| format!("`{text}`: write `between A and B`"))?;
        let (a, b) = (number(a)?, number(b)?);
        if a > b {
            return Err(format!("`{text}`: {a} is greater than {b}"));
        }
        return Ok(Expect::Between(a, b));
    }
    for (prefix, op) in [
        (">=", Op::Ge),
        ("<=", Op::Le),
        ("!=", Op::Ne),
        (">", Op::Gt),
        ("<", Op::Lt),
        ("=", Op::Eq),
    ] {
        if let Some(rest) = t.strip_prefix(prefix) {
            return Ok(Expect::Compare(op, number(rest)?));
        }
    }
    Err(format!(
        "`{text}` is not an expectation: use > N, >= N, = N, != N, < N, <= N, between A and B, empty or not empty"
    ))
}

/// Checks a query's first-column values; returns what was seen and whether it meets `expect`.
pub fn evaluate(expect: &Expect, values: &[Option<String>]) -> (String, bool) {
    match expect {
        Expect::Empty => (format!("{} rows", values.len()), values.is_empty()),
        Expect::NotEmpty => (format!("{} rows", values.len()), !values.is_empty()),
        _ => {
            if values.len() != 1 {
                return (format!("{} rows (expected one)", values.len()), false);
            }
            let Some(text) = &values[0] else {
                return ("NULL".into(), false);
            };
            let Ok(v) = text.trim().parse::<f64>() else {
                return (text.clone(), false);
            };
            let ok = match *expect {
                Expect::Compare(Op::Gt, n) => v > n,
                Expect::Compare(Op::Ge, n) => v >= n,
                Expect::Compare(Op::Eq, n) => v == n,
                Expect::Compare(Op::Ne, n) => v != n,
                Expect::Compare(Op::Lt, n) => v < n,
                Expect::Compare(Op::Le, n) => v <= n,
                Expect::Between(a, b) => v >= a && v <= b,
                Expect::Empty | Expect::NotEmpty => false,
            };
            (text.clone(), ok)
        }
    }
}

/// `all`, `N%` or a fraction in (0, 1] -> the share of objects whose data verify reads.
pub fn parse_share(text: &str) -> Result<f64, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("all") {
        return Ok(1.0);
    }
    let (number, scale) = match t.strip_suffix('%') {
        Some(n) => (n, 100.0),
        None => (t, 1.0),
    };
    let v: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a share: write all, a percentage such as 10%, or a fraction such as 0.1"))?;
    let share = v / scale;
    if !(0.0..=1.0).contains(&share) {
        return Err(format!("`{text}` is not between 0% and 100%"));
    }
    Ok(share)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<Option<String>> {
        s.iter().map(|x| Some(x.to_string())).collect()
    }

    #[test]
    fn parses_every_form() {
        assert_eq!(parse_expect("> 0").unwrap(), Expect::Compare(Op::Gt, 0.0));
        assert_eq!(parse_expect(">=10").unwrap(), Expect::Compare(Op::Ge, 10.0));
        assert_eq!(parse_expect("= 3").unwrap(), Expect::Compare(Op::Eq, 3.0));
        assert_eq!(parse_expect("!= 3").unwrap(), Expect::Compare(Op::Ne, 3.0));
        assert_eq!(parse_expect("< 1.5").unwrap(), Expect::Compare(Op::Lt, 1.5));
        assert_eq!(parse_expect("<= 2").unwrap(), Expect::Compare(Op::Le, 2.0));
        assert_eq!(
            parse_expect("between 1 and 5").unwrap(),
            Expect::Between(1.0, 5.0)
        );
        assert_eq!(parse_expect("Empty").unwrap(), Expect::Empty);
        assert_eq!(parse_expect("not empty").unwrap(), Expect::NotEmpty);
        for bad in ["", "> x", "about 5", "between 5 and 1", "between 1", "== 3"] {
            assert!(parse_expect(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn evaluates() {
        let e = |s| parse_expect(s).unwrap();
        assert!(evaluate(&e("> 0"), &v(&["5"])).1);
        assert!(!evaluate(&e("> 0"), &v(&["0"])).1);
        assert!(evaluate(&e("between 1 and 5"), &v(&["5"])).1);
        assert!(!evaluate(&e("between 1 and 5"), &v(&["5.01"])).1);
        assert!(evaluate(&e("!= 3"), &v(&["4"])).1);
        assert!(
            !evaluate(&e("= 3"), &v(&["3", "3"])).1,
            "two rows are not one value"
        );
        assert!(!evaluate(&e("= 3"), &[None]).1);
        assert!(!evaluate(&e("= 3"), &v(&["three"])).1);
        assert!(evaluate(&e("empty"), &[]).1);
        assert!(evaluate(&e("not empty"), &v(&["x"])).1);
        assert_eq!(evaluate(&e("> 0"), &v(&["7"])).0, "7");
    }

    #[test]
    fn shares() {
        assert_eq!(parse_share("all").unwrap(), 1.0);
        assert_eq!(parse_share("10%").unwrap(), 0.1);
        assert_eq!(parse_share("0.25").unwrap(), 0.25);
        assert_eq!(parse_share("0%").unwrap(), 0.0);
        for bad in ["110%", "-1%", "some", "2"] {
            assert!(parse_share(bad).is_err(), "{bad}");
        }
    }
}
