//! `report.png`: one panel per group of side-by-side figures, a horizontal
//! bar per figure (the median) with its min..max range drawn across it.
//! Text uses the public-domain 8x8 bitmap font of the `font8x8` crate.

use std::path::Path;

use anyhow::{Context as _, Result};

use super::{unit, Figure, Results};

/// Panels: title and the figures it shows (a trailing `*` matches a prefix).
const PANELS: &[(&str, &[&str])] = &[
    ("XDP cost per packet, ns (lower is better)", &["xdp_ns_*"]),
    (
        "Forwarding, packets/s (higher is better)",
        &["fwd_pps_xlb_nat", "fwd_pps_xlb_nat_one_arm", "fwd_pps_nftables_dnat", "fwd_pps_generator_only"],
    ),
    ("lb CPU per million forwarded packets, s (lower is better)", &["lb_cpu_fwd_*"]),
    ("HTTP kept-alive, requests/s (higher is better)", &["http_rps_*"]),
    ("HTTP p99 latency kept-alive, ms (lower is better)", &["http_p99_ms_*"]),
    ("lb CPU per million kept-alive requests, s (lower is better)", &["lb_cpu_http_rps_*"]),
    ("HTTP one connection per request, connections/s (higher is better)", &["http_cps_*"]),
    ("lb CPU per million connections, s (lower is better)", &["lb_cpu_http_cps_*"]),
    ("Maglev build time, ms; failover, ms (lower is better)", &["maglev_build_ms_*", "failover_ms", "failover_ms_lb"]),
    (
        "Maglev balance (max/mean) and disruption (/ ideal 1/N), lower is better",
        &["maglev_max_over_mean_*", "maglev_disruption_*"],
    ),
];

/// Characters of the value text right of the bars (longer is cut).
const VALUE_CHARS: usize = 48;
const SCALE: usize = 2;
const GLYPH: usize = 8 * SCALE;
const LABEL_W: usize = 34 * GLYPH;
const BAR_X: usize = LABEL_W + 10;
const BAR_MAX_W: usize = 420;
const ROW_H: usize = GLYPH + 8;
const MARGIN: usize = 12;

const WHITE: [u8; 3] = [255, 255, 255];
const BLACK: [u8; 3] = [20, 20, 20];
const GREY: [u8; 3] = [110, 110, 110];
const XLB: [u8; 3] = [40, 110, 200];
const OTHER: [u8; 3] = [200, 130, 40];

fn pattern_matches(p: &str, name: &str) -> bool {
    p.strip_suffix('*').map_or(name == p, |prefix| name.starts_with(prefix))
}

/// The figures of each panel that exist in this run, in report order.
fn panels(r: &Results) -> Vec<(&'static str, Vec<&Figure>)> {
    PANELS
        .iter()
        .map(|(title, patterns)| {
            let mut figs: Vec<&Figure> = Vec::new();
            for p in *patterns {
                for f in r.figures.iter().filter(|f| pattern_matches(p, &f.name)) {
                    if !figs.iter().any(|g| g.name == f.name) {
                        figs.push(f);
                    }
                }
            }
            (*title, figs)
        })
        .filter(|(_, figs)| !figs.is_empty())
        .collect()
}

struct Canvas {
    w: usize,
    h: usize,
    rgb: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Canvas {
        Canvas { w, h, rgb: WHITE.repeat(w * h) }
    }

    fn rect(&mut self, x: usize, y: usize, w: usize, h: usize, c: [u8; 3]) {
        for yy in y..(y + h).min(self.h) {
            for xx in x..(x + w).min(self.w) {
                let i = (yy * self.w + xx) * 3;
                self.rgb[i..i + 3].copy_from_slice(&c);
            }
        }
    }

    fn text(&mut self, x: usize, y: usize, s: &str, c: [u8; 3]) {
        for (k, ch) in s.chars().enumerate() {
            let glyph = font8x8::legacy::BASIC_LEGACY[if ch.is_ascii() { ch as usize } else { b'?' as usize }];
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) != 0 {
                        self.rect(x + k * GLYPH + col * SCALE, y + row * SCALE, SCALE, SCALE, c);
                    }
                }
            }
        }
    }
}

fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn draw_bar(c: &mut Canvas, y: usize, f: &Figure, scale_max: f64) {
    let px = |v: f64| ((v / scale_max) * BAR_MAX_W as f64).round().clamp(0.0, BAR_MAX_W as f64) as usize;
    let ours = f.name.contains("xlb") || f.name.starts_with("maglev") || f.name.starts_with("failover_ms");
    let color = if ours || (f.name.starts_with("xdp_ns_") && f.name != "xdp_ns_floor") { XLB } else { OTHER };
    c.text(MARGIN, y + 4, &f.name, BLACK);
    c.rect(BAR_X, y + 2, px(f.median).max(1), GLYPH, color);
    // min..max range across the bar
    let (lo, hi) = (px(f.min), px(f.max));
    c.rect(BAR_X + lo, y + 2 + GLYPH / 2 - 1, (hi - lo).max(1), 3, BLACK);
    c.rect(BAR_X + lo, y + 4, 2, GLYPH - 4, BLACK);
    c.rect(BAR_X + hi.max(1) - 1, y + 4, 2, GLYPH - 4, BLACK);
    let label = format!("{} ({}..{}) {}", short(f.median), short(f.min), short(f.max), unit(&f.name));
    let label: String = label.chars().take(VALUE_CHARS).collect();
    c.text(BAR_X + BAR_MAX_W + 12, y + 4, &label, GREY);
}

fn render(r: &Results) -> Canvas {
    let panels = panels(r);
    let rows: usize = panels.iter().map(|(_, f)| f.len() + 2).sum();
    let width = BAR_X + BAR_MAX_W + 12 + VALUE_CHARS * GLYPH + MARGIN;
    let mut c = Canvas::new(width, rows * ROW_H + 2 * MARGIN + ROW_H);
    let mut y = MARGIN;
    c.text(MARGIN, y, "xlb benchmark: bars = median, black line = min..max; blue = xlb, orange = others", BLACK);
    y += ROW_H + 4;
    for (title, figs) in panels {
        c.text(MARGIN, y + 4, title, XLB);
        y += ROW_H;
        let scale_max = figs.iter().map(|f| f.max.max(f.median)).fold(0.0, f64::max).max(f64::MIN_POSITIVE);
        for f in figs {
            draw_bar(&mut c, y, f, scale_max);
            y += ROW_H;
        }
        c.rect(MARGIN, y + ROW_H / 2, c.w - 2 * MARGIN, 1, GREY);
        y += ROW_H;
    }
    c
}

pub fn write_png(path: &Path, r: &Results) -> Result<()> {
    let c = render(r);
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), c.w as u32, c.h as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().context("writing the PNG header")?;
    w.write_image_data(&c.rgb).context("writing the PNG image")?;
    w.finish().context("finishing the PNG")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_group_present_figures_only() {
        let mut r = Results::default();
        for l in [
            "FIG http_rps_xlb_nat 90000 85000 95000 5",
            "FIG http_rps_haproxy 50000 48000 52000 5",
            "FIG xdp_ns_floor 50 48 55 5",
        ] {
            r.read_line(l);
        }
        let p = panels(&r);
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[1].1.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
            ["http_rps_xlb_nat", "http_rps_haproxy"]
        );
        let c = render(&r);
        assert_eq!(c.rgb.len(), c.w * c.h * 3);
        assert!(c.rgb.chunks(3).any(|px| px == XLB), "the xlb bar is drawn");
    }
}
