//! The weekly picture: a [`WeekSummary`] drawn as one PNG (grants per day
//! by VM group, a member × weekday heat map of hours held open, refusals
//! and coverage), plus its CSV.
//!
//! Drawn with plotters' bitmap backend into memory and encoded with `png`.
//! The font is embedded (DejaVu Sans, `assets/fonts/`), so the picture is
//! the same on a slim container without any system fonts. It is a
//! proportional font on purpose: plotters' ab_glyph backend draws each glyph
//! at the pen position without its left side bearing, which spreads a
//! monospaced font's narrow glyphs (`.`, `-`) visibly apart.

use std::sync::Once;

use chrono::Duration;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, register_font};

use crate::domain::AuditAction;
use crate::domain::report::{ReportGrant, WeekSummary, summarize};
use crate::store::{AuditFilter, Store, StoreError};

/// The picture's size in pixels.
pub const WIDTH: u32 = 1200;
pub const HEIGHT: u32 = 900;
/// The embedded font (DejaVu fonts license, see `assets/fonts/LICENSE`).
const FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
/// The family name the charts ask for; registered to [`FONT`].
const FAMILY: &str = "sans-serif";
/// The background.
pub const BACKGROUND: RGBColor = RGBColor(255, 255, 255);
/// The heat map's colour for "no hours".
pub const HEAT_EMPTY: RGBColor = RGBColor(240, 240, 240);
/// The heat map's colour at the week's maximum.
pub const HEAT_FULL: RGBColor = RGBColor(200, 40, 40);
/// One colour per VM group, in name order.
pub const GROUP_COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
];

/// Why a picture could not be made.
#[derive(Debug, thiserror::Error)]
#[error("drawing the report: {0}")]
pub struct RenderError(String);

fn fail(e: impl std::fmt::Display) -> RenderError {
    RenderError(e.to_string())
}

fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            // Only fails for a font that does not parse: the embedded one does.
            let _ = register_font(FAMILY, style, FONT);
        }
    });
}

/// The week as a PNG of [`WIDTH`] × [`HEIGHT`].
///
/// # Errors
/// [`RenderError`] if drawing or encoding fails.
pub fn render_png(week: &WeekSummary) -> Result<Vec<u8>, RenderError> {
    register();
    let mut pixels = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&BACKGROUND).map_err(fail)?;
        let title = format!(
            "Drawbridge: access from {} ({} days)",
            week.first_day, week.days
        );
        let root = root
            .titled(&title, (FAMILY, 30).into_font().style(FontStyle::Bold))
            .map_err(fail)?;
        let (upper, lower) = root.split_vertically(420);
        let (heat, side) = lower.split_horizontally(820);
        grants_chart(&upper, week)?;
        heat_map(&heat, week)?;
        counts_panel(&side, week)?;
        root.present().map_err(fail)?;
    }
    encode(&pixels)
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// Stacked bars: grants opened per day, one colour per VM group, one
/// labelled segment per day.
fn grants_chart(area: &Area<'_>, week: &WeekSummary) -> Result<(), RenderError> {
    let days = week.days;
    let totals: Vec<u32> = (0..days as usize)
        .map(|d| week.grants_per_day.values().map(|v| v[d]).sum())
        .collect();
    let top = totals.iter().copied().max().unwrap_or(0).max(1) + 1;
    let mut chart = ChartBuilder::on(area)
        .caption("Grants per day by VM group", (FAMILY, 22))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(segments(days), 0u32..top)
        .map_err(fail)?;
    let first = week.first_day;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(days as usize)
        .y_labels(top as usize + 1)
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(d) => (first + Duration::days(i64::from(*d)))
                .format("%a %d")
                .to_string(),
            _ => String::new(),
        })
        .y_desc("grants")
        .label_style((FAMILY, 15))
        .draw()
        .map_err(fail)?;
    let mut base = vec![0u32; days as usize];
    for (i, (group, counts)) in week.grants_per_day.iter().enumerate() {
        let colour = GROUP_COLOURS[i % GROUP_COLOURS.len()];
        let mut bars = Vec::new();
        for (d, n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
            let day = d as u32;
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(day), base[d]),
                    (SegmentValue::Exact(day + 1), base[d] + n),
                ],
                colour.filled(),
            );
            bar.set_margin(0, 0, 14, 14);
            base[d] += n;
            bars.push(bar);
        }
        chart
            .draw_series(bars)
            .map_err(fail)?
            .label(group.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FAMILY, 15))
        .draw()
        .map_err(fail)?;
    Ok(())
}

/// Members down (in name order, from the top), weekdays across, colour by
/// hours held open.
fn heat_map(area: &Area<'_>, week: &WeekSummary) -> Result<(), RenderError> {
    let members: Vec<(&String, &[f64; 7])> = week.hours_by_weekday.iter().collect();
    let rows = members.len().max(1) as u32;
    let max = members
        .iter()
        .flat_map(|(_, h)| h.iter().copied())
        .fold(0.0, f64::max);
    // Row 0 is drawn at the bottom: the first name goes in the top row.
    let row_of = |i: usize| rows - 1 - i as u32;
    let names: Vec<String> = members.iter().rev().map(|(m, _)| (*m).clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption("Hours held open: member x weekday", (FAMILY, 22))
        .margin(15)
        .x_label_area_size(30)
        .y_label_area_size(130)
        .build_cartesian_2d(segments(7), segments(rows))
        .map_err(fail)?;
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(7)
        .y_labels(rows as usize)
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(d) => DAYS.get(*d as usize).copied().unwrap_or("").into(),
            _ => String::new(),
        })
        .y_label_formatter(&|y| match y {
            SegmentValue::CenterOf(r) => names.get(*r as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .label_style((FAMILY, 15))
        .draw()
        .map_err(fail)?;
    let mut cells = Vec::new();
    let mut labels = Vec::new();
    let centred =
        TextStyle::from((FAMILY, 15).into_font()).pos(Pos::new(HPos::Center, VPos::Center));
    for (i, (_, hours)) in members.iter().enumerate() {
        let row = row_of(i);
        for (day, h) in hours.iter().enumerate() {
            let day = day as u32;
            let mut cell = Rectangle::new(
                [
                    (SegmentValue::Exact(day), SegmentValue::Exact(row)),
                    (SegmentValue::Exact(day + 1), SegmentValue::Exact(row + 1)),
                ],
                heat(*h, max).filled(),
            );
            cell.set_margin(3, 3, 3, 3);
            cells.push(cell);
            if *h > 0.0 {
                labels.push(Text::new(
                    format!("{h:.1}"),
                    (SegmentValue::CenterOf(day), SegmentValue::CenterOf(row)),
                    centred.clone(),
                ));
            }
        }
    }
    chart.draw_series(cells).map_err(fail)?;
    chart.draw_series(labels).map_err(fail)?;
    Ok(())
}

/// `n` segments, one per value `0..n`. Plotters' segmented range over
/// `a..b` holds `b - a + 1` values, so `0..n` would add an empty column.
fn segments(
    n: u32,
) -> plotters::coord::ranged1d::SegmentedCoord<plotters::coord::types::RangedCoordu32> {
    (0u32..n.max(1) - 1).into_segmented()
}

/// The colour of `hours` on a scale up to `max`.
pub fn heat(hours: f64, max: f64) -> RGBColor {
    if hours <= 0.0 || max <= 0.0 {
        return HEAT_EMPTY;
    }
    let t = (hours / max).clamp(0.15, 1.0);
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * t).round() as u8;
    RGBColor(
        mix(255, HEAT_FULL.0),
        mix(230, HEAT_FULL.1),
        mix(200, HEAT_FULL.2),
    )
}

/// The numbers beside the heat map.
fn counts_panel(area: &Area<'_>, week: &WeekSummary) -> Result<(), RenderError> {
    let style = (FAMILY, 18).into_font();
    let big = (FAMILY, 40).into_font().style(FontStyle::Bold);
    let mut y = 30;
    let mut line = |text: String, font: &plotters::style::FontDesc<'_>, gap: i32| {
        let drawn = area.draw(&Text::new(text, (10, y), font.clone()));
        y += gap;
        drawn.map_err(fail)
    };
    line(week.total_grants().to_string(), &big, 45)?;
    line("grants".into(), &style, 40)?;
    line(week.denials.to_string(), &big, 45)?;
    line("denials".into(), &style, 40)?;
    line(week.break_glass.to_string(), &big, 45)?;
    line("break-glass uses".into(), &style, 40)?;
    match &week.without_jit {
        Some(without) => {
            line(without.len().to_string(), &big, 45)?;
            line("VMs without JIT".into(), &style, 25)?;
            for vm in without.iter().take(4) {
                line(format!("- {vm}"), &(FAMILY, 14).into_font(), 20)?;
            }
        }
        None => {
            line("?".into(), &big, 45)?;
            line("coverage not checked".into(), &style, 25)?;
        }
    }
    Ok(())
}

fn encode(pixels: &[u8]) -> Result<Vec<u8>, RenderError> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, WIDTH, HEIGHT);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(fail)?;
        writer.write_image_data(pixels).map_err(fail)?;
        writer.finish().map_err(fail)?;
    }
    Ok(out)
}

/// The `days` days from `first_day` as the database has them, as of
/// `now`: the grants requested in them, the members' names from the audit
/// log, and the refusals. Coverage is left for the caller (it needs Azure).
///
/// # Errors
/// If the store fails.
pub async fn gather(
    store: &Store,
    first_day: chrono::NaiveDate,
    days: u32,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<WeekSummary, StoreError> {
    let since = first_day.and_time(chrono::NaiveTime::MIN).and_utc();
    let until = since + Duration::days(i64::from(days));
    let events = store
        .audit_events(&AuditFilter {
            since: Some(since),
            ..AuditFilter::default()
        })
        .await?;
    let events: Vec<_> = events.into_iter().filter(|r| r.event.at < until).collect();
    let names: std::collections::HashMap<String, String> = events
        .iter()
        .filter(|r| r.event.action == AuditAction::RequestReceived)
        .filter_map(|r| {
            let id = r.event.actor.strip_prefix("discord:")?;
            Some((id.to_owned(), r.event.detail["user"].as_str()?.to_owned()))
        })
        .collect();
    let grants: Vec<ReportGrant> = store
        .grants_requested_since(since)
        .await?
        .into_iter()
        .map(|g| {
            let id = g.user_id.to_string();
            ReportGrant {
                member: names.get(&id).cloned().unwrap_or(id),
                group: g.vm_name.split('/').next().unwrap_or_default().to_owned(),
                state: g.state,
                requested_at: g.requested_at,
                end_time: g.end_time,
                state_changed_at: g.state_changed_at,
            }
        })
        .collect();
    let mut week = summarize(&grants, first_day, days, now);
    let count =
        |action: AuditAction| events.iter().filter(|r| r.event.action == action).count() as u32;
    week.denials = count(AuditAction::AccessDenied);
    week.break_glass = count(AuditAction::BreakGlassUsed);
    Ok(week)
}

/// The week as CSV: one row per group and day, then one per member and
/// weekday, then the counts.
///
/// # Errors
/// If the CSV writer fails (it writes to memory).
pub fn render_csv(week: &WeekSummary) -> anyhow::Result<String> {
    let mut csv = csv::Writer::from_writer(Vec::new());
    csv.write_record(["kind", "key", "when", "value"])?;
    for (group, counts) in &week.grants_per_day {
        for (d, n) in counts.iter().enumerate() {
            let day = week.first_day + Duration::days(d as i64);
            csv.write_record(["grants", group, &day.to_string(), &n.to_string()])?;
        }
    }
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    for (member, hours) in &week.hours_by_weekday {
        for (d, h) in hours.iter().enumerate() {
            csv.write_record(["hours_open", member, DAYS[d], &format!("{h:.2}")])?;
        }
    }
    csv.write_record(["denials", "", "", &week.denials.to_string()])?;
    csv.write_record(["break_glass", "", "", &week.break_glass.to_string()])?;
    if let Some(without) = &week.without_jit {
        for vm in without {
            csv.write_record(["without_jit", vm, "", ""])?;
        }
    }
    Ok(String::from_utf8(csv.into_inner()?)?)
}
