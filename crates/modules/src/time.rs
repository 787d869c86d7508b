//! `mod_time`: XEP-0202 entity time, and the XEP-0082 date-time format it uses.
//!
//! The server keeps UTC, so the offset is always `+00:00`. The date is formatted here from
//! the Unix time with the proleptic Gregorian civil-from-days conversion (days since
//! 1970-01-01 split into 400-year eras of 146 097 days, with years starting in March so the
//! leap day is the last day of the year), which is exact for every date, negative times
//! included. [`format_datetime`] is public for other XEP-0082 users (e.g. `<delay/>` stamps).

use std::sync::Arc;

use starling_config::{ModuleOptions, ModuleSpec};
use starling_core::BoxFuture;
use starling_core::Server;
use starling_core::module::{
    HostContext, IqHandler, IqResult, IqTarget, Module, ModuleError, Registrations,
};
use starling_core::server::unix_now;
use starling_xmpp::ns;
use starling_xmpp::stanza::{Stanza, element, text_element};

use crate::iq;

/// `mod_time`.
pub struct Time;

impl Module for Time {
    fn spec(&self) -> ModuleSpec {
        ModuleSpec {
            name: "mod_time",
            aliases: &["time"],
            options: &[],
        }
    }

    fn start(
        &self,
        _host: &HostContext<'_>,
        _options: &ModuleOptions,
    ) -> Result<Registrations, ModuleError> {
        Ok(Registrations::default().iq(ns::TIME, IqTarget::Host, Arc::new(TimeHandler)))
    }
}

/// Answers `<time xmlns='urn:xmpp:time'/>` (XEP-0202 §3).
struct TimeHandler;

impl IqHandler for TimeHandler {
    fn handle<'a>(&'a self, _server: &'a Server, iq: &'a Stanza) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            iq::get_payload(iq)?;
            Ok(Some(time_element(unix_now())))
        })
    }
}

/// `<time xmlns='urn:xmpp:time'><tzo>+00:00</tzo><utc>..</utc></time>` for `unix_seconds`.
pub fn time_element(unix_seconds: i64) -> starling_xmpp::Element {
    let mut time = element("time", ns::TIME, &[]);
    time.append_child(text_element("tzo", ns::TIME, "+00:00"));
    time.append_child(text_element(
        "utc",
        ns::TIME,
        &format_datetime(unix_seconds),
    ));
    time
}

/// XEP-0082 `DateTime` in UTC, e.g. `2026-11-23T10:00:00Z`.
pub fn format_datetime(unix_seconds: i64) -> String {
    const DAY: i64 = 86_400;
    let days = unix_seconds.div_euclid(DAY);
    let secs = unix_seconds.rem_euclid(DAY);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// (year, month 1..=12, day 1..=31) of the day `days` after 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    // Shift the epoch to 0000-03-01, so that each "year" ends with February and its leap day.
    let z = days.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    // Leap days before this day in the era: one per 4 years, minus centuries, plus the
    // 400th year; the three corrections make 365 divide exactly.
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months from March, in 153-day groups of five months (31+30+31+30+31).
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::Fixture;

    #[test]
    fn known_dates() {
        for (secs, text) in [
            (0, "1970-01-01T00:00:00Z"),
            (1_700_000_000, "2023-11-14T22:13:20Z"),
            (1_795_428_000, "2026-11-23T10:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (951_782_399, "2000-02-28T23:59:59Z"),
            (4_107_542_400, "2100-03-01T00:00:00Z"),
            (253_402_300_799, "9999-12-31T23:59:59Z"),
            (-1, "1969-12-31T23:59:59Z"),
            (-86_401, "1969-12-30T23:59:59Z"),
            (-2_208_988_800, "1900-01-01T00:00:00Z"),
        ] {
            assert_eq!(format_datetime(secs), text, "{secs}");
        }
    }

    #[test]
    fn every_day_of_four_centuries_follows_the_previous_one() {
        // Walk 1900-01-01 .. 2300-01-01 and check the calendar advances by exactly one day.
        let mut prev = civil_from_days(-25_567);
        assert_eq!(prev, (1900, 1, 1));
        for d in -25_566..120_000 {
            let cur = civil_from_days(d);
            let next_day = (prev.0, prev.1, prev.2 + 1);
            let next_month = (prev.0, prev.1 + 1, 1);
            let next_year = (prev.0 + 1, 1, 1);
            assert!(
                cur == next_day || cur == next_month || cur == next_year,
                "{prev:?} -> {cur:?}"
            );
            prev = cur;
        }
    }

    #[test]
    fn extreme_inputs_do_not_panic() {
        let _ = format_datetime(i64::MAX);
        let _ = format_datetime(i64::MIN);
    }

    #[tokio::test]
    async fn answers_utc_time() {
        let f = Fixture::new().await;
        let mut s = f.session("alice@localhost/a").await;
        let before = unix_now();
        let reply = s
            .iq("localhost", "get", "<time xmlns='urn:xmpp:time'/>")
            .await;
        let t = reply.payload().unwrap();
        assert!(t.is("time", ns::TIME));
        assert_eq!(t.get_child("tzo", ns::TIME).unwrap().text(), "+00:00");
        let utc = t.get_child("utc", ns::TIME).unwrap().text();
        let after = unix_now();
        assert!(
            utc == format_datetime(before) || utc == format_datetime(after),
            "{utc}"
        );
    }
}
