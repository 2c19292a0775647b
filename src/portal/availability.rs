//! Weekly availability turned into Slot times ($generate-slots): opening hours and breaks in
//! local wall-clock time, expanded day by day in the schedule's IANA time zone, so that a
//! clinic open 09:00–17:00 stays open 09:00–17:00 across daylight-saving changes. Every Slot
//! lasts its length in real time: one that would span a change (in the hour skipped in spring
//! or repeated in autumn) is left out.

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// The R4 core extension that gives a resource's IANA time zone (on a Schedule: the zone its
/// weekly hours are in).
pub const TIMEZONE_EXTENSION: &str = "http://hl7.org/fhir/StructureDefinition/timezone";

/// Days of the week as written in availability (`mon` … `sun`), Monday first.
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Local times on some days of the week: `[start, end)` in minutes after midnight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Monday first.
    days: [bool; 7],
    start: i32,
    end: i32,
}

impl Window {
    /// Parses `mon-fri 09:00-17:00`, `mon,wed 08:30-12:00` or, when `every_day_by_default`,
    /// a bare `12:00-13:00` (every day).
    pub fn parse(text: &str, every_day_by_default: bool) -> Result<Window, String> {
        let text = text.trim();
        let (days, times) = match text.rsplit_once(char::is_whitespace) {
            Some((days, times)) => (parse_days(days.trim())?, times),
            None if every_day_by_default => ([true; 7], text),
            None => return Err(format!("'{text}': give the days and the hours, e.g. 'mon-fri 09:00-17:00'")),
        };
        let (start, end) =
            times.split_once('-').ok_or_else(|| format!("'{times}' is not a time range such as 09:00-17:00"))?;
        let (start, end) = (minutes(start)?, minutes(end)?);
        if end <= start {
            return Err(format!("'{times}': the range must end after it starts"));
        }
        Ok(Window { days, start, end })
    }

    fn covers(&self, weekday: usize, start: i32, end: i32) -> bool {
        self.days[weekday] && start < self.end && self.start < end
    }
}

/// `mon-fri`, `sat`, `mon,wed,fri`, `mon-wed,sat`.
fn parse_days(text: &str) -> Result<[bool; 7], String> {
    let mut days = [false; 7];
    for part in text.split(',') {
        let index = |name: &str| {
            DAYS.iter()
                .position(|d| d.eq_ignore_ascii_case(name.trim()))
                .ok_or_else(|| format!("'{name}' is not a day (mon, tue, wed, thu, fri, sat, sun)"))
        };
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (index(first)?, index(last)?);
                let mut day = first;
                loop {
                    days[day] = true;
                    if day == last {
                        break;
                    }
                    day = (day + 1) % 7;
                }
            }
            None => days[index(part)?] = true,
        }
    }
    Ok(days)
}

/// `HH:MM` as minutes after midnight (`24:00` is the end of the day).
fn minutes(text: &str) -> Result<i32, String> {
    let wrong = || format!("'{text}' is not a time such as 09:30");
    let (hours, minutes) = text.trim().split_once(':').ok_or_else(wrong)?;
    let (hours, minutes): (i32, i32) = (hours.parse().map_err(|_| wrong())?, minutes.parse().map_err(|_| wrong())?);
    if !(0..60).contains(&minutes) || !(0..=24).contains(&hours) || hours == 24 && minutes > 0 {
        return Err(wrong());
    }
    Ok(hours * 60 + minutes)
}

/// One Slot's time: its instants, and the same as local date-times with their offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotTime {
    pub start: Timestamp,
    pub end: Timestamp,
    /// `2026-03-09T09:00:00-04:00`.
    pub start_text: String,
    pub end_text: String,
}

/// The Slot times of the local dates `from` to `to` (included): each window of `open` cut into
/// `length` minutes, leaving out what overlaps a `breaks` window and local times that do not
/// exist in `zone`; in order, without overlaps.
pub fn slot_times(
    open: &[Window],
    breaks: &[Window],
    from: Date,
    to: Date,
    length: i32,
    zone: &TimeZone,
) -> Result<Vec<SlotTime>, String> {
    let mut times = Vec::new();
    let mut day = from;
    while day <= to {
        let weekday = day.weekday().to_monday_zero_offset() as usize;
        let mut starts: Vec<i32> = Vec::new();
        for window in open.iter().filter(|w| w.days[weekday]) {
            let mut start = window.start;
            while start + length <= window.end {
                if !breaks.iter().any(|b| b.covers(weekday, start, start + length)) {
                    starts.push(start);
                }
                start += length;
            }
        }
        starts.sort_unstable();
        let mut last_end = i32::MIN;
        for start in starts {
            if start < last_end {
                continue;
            }
            let Some(begin) = local(day, start, zone)? else { continue };
            // The end a Slot's length after its start, in real time; a Slot across a
            // daylight-saving change (its end not the local time planned) is left out.
            let end =
                begin.checked_add(jiff::SignedDuration::from_mins(i64::from(length))).map_err(|e| e.to_string())?;
            if end.datetime() != planned(day, start + length)? {
                continue;
            }
            last_end = start + length;
            times.push(SlotTime {
                start: begin.timestamp(),
                end: end.timestamp(),
                start_text: begin.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
                end_text: end.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
            });
        }
        day = match day.tomorrow() {
            Ok(next) => next,
            Err(_) => break,
        };
    }
    Ok(times)
}

/// The local date-time `minutes` after midnight of `day` (`24:00` is the next midnight).
fn planned(day: Date, minutes: i32) -> Result<DateTime, String> {
    let (day, minutes) = match minutes {
        1440 => (day.tomorrow().map_err(|e| e.to_string())?, 0),
        _ => (day, minutes),
    };
    let time = Time::new((minutes / 60) as i8, (minutes % 60) as i8, 0, 0).map_err(|e| e.to_string())?;
    Ok(DateTime::from_parts(day, time))
}

/// The local time `minutes` after midnight of `day` in `zone` (its first occurrence when it
/// occurs twice); `None` when it does not exist there (skipped by a daylight-saving change).
fn local(day: Date, minutes: i32, zone: &TimeZone) -> Result<Option<jiff::Zoned>, String> {
    let wanted = planned(day, minutes)?;
    let zoned = zone.to_ambiguous_zoned(wanted).compatible().map_err(|e| e.to_string())?;
    Ok((zoned.datetime() == wanted).then_some(zoned))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(text: &str) -> Date {
        text.parse().unwrap()
    }

    #[test]
    fn parses_days_and_hours() {
        let window = Window::parse("mon-fri 09:00-17:00", false).unwrap();
        assert_eq!(window.days, [true, true, true, true, true, false, false]);
        assert_eq!((window.start, window.end), (540, 1020));
        assert_eq!(
            Window::parse("sat,SUN 08:30-12:00", false).unwrap().days,
            [false, false, false, false, false, true, true]
        );
        assert_eq!(
            Window::parse("fri-mon 10:00-11:00", false).unwrap().days,
            [true, false, false, false, true, true, true]
        );
        assert_eq!(Window::parse("12:00-13:00", true).unwrap().days, [true; 7]);
        assert!(Window::parse("12:00-13:00", false).is_err());
        assert!(Window::parse("mon 13:00-12:00", false).unwrap_err().contains("end after"));
        assert!(Window::parse("funday 09:00-10:00", false).unwrap_err().contains("not a day"));
        assert!(Window::parse("mon 9h-10h", false).is_err());
        assert!(Window::parse("mon 09:00-24:00", false).is_ok());
        assert!(Window::parse("mon 09:00-24:30", false).is_err());
    }

    #[test]
    fn cuts_windows_into_slots_without_breaks() {
        let open = [Window::parse("mon-fri 09:00-12:00", false).unwrap()];
        let breaks = [Window::parse("10:00-10:30", true).unwrap()];
        // 2026-12-07 is a Monday; the 12th and 13th are a weekend.
        let zone = TimeZone::get("Europe/Paris").unwrap();
        let times = slot_times(&open, &breaks, date("2026-12-07"), date("2026-12-13"), 30, &zone).unwrap();
        assert_eq!(times.len(), 5 * 5);
        assert_eq!(times[0].start_text, "2026-12-07T09:00:00+01:00");
        assert_eq!(times[0].end_text, "2026-12-07T09:30:00+01:00");
        assert_eq!(times[2].start_text, "2026-12-07T10:30:00+01:00", "the break is left out");
        assert_eq!(times[0].start.as_second(), 1_796_630_400);
    }

    #[test]
    fn keeps_local_hours_across_daylight_saving_changes() {
        let zone = TimeZone::get("America/New_York").unwrap();
        let open = [Window::parse("sat-mon 09:00-10:00", false).unwrap()];
        // Clocks go forward on Sunday 2027-03-14.
        let times = slot_times(&open, &[], date("2027-03-13"), date("2027-03-15"), 60, &zone).unwrap();
        let texts: Vec<&str> = times.iter().map(|t| t.start_text.as_str()).collect();
        assert_eq!(texts, ["2027-03-13T09:00:00-05:00", "2027-03-14T09:00:00-04:00", "2027-03-15T09:00:00-04:00"]);
        // A night clinic: 02:00–03:00 does not exist on the 14th, and the Slot 01:00–02:00
        // would last two hours on 2027-11-07 (01:00 happens twice): Slots across a change
        // are left out, each other Slot lasts its length.
        let night = [Window::parse("sun 01:00-04:00", false).unwrap()];
        let spring = slot_times(&night, &[], date("2027-03-14"), date("2027-03-14"), 60, &zone).unwrap();
        let texts: Vec<&str> = spring.iter().map(|t| t.start_text.as_str()).collect();
        assert_eq!(texts, ["2027-03-14T03:00:00-04:00"]);
        let autumn = slot_times(&night, &[], date("2027-11-07"), date("2027-11-07"), 60, &zone).unwrap();
        let texts: Vec<&str> = autumn.iter().map(|t| t.start_text.as_str()).collect();
        assert_eq!(texts, ["2027-11-07T02:00:00-05:00", "2027-11-07T03:00:00-05:00"]);
        assert!(autumn.iter().all(|t| t.end.as_second() - t.start.as_second() == 3600));
    }
}
