//! `flowaudit serve`: every rule on its own schedule, with catch-up, alert delivery, and ingest
//! alongside when asked.
//!
//! Each rule's schedule is a cron expression (UTC). A firing at time `t` runs the rule over
//! `[t - lookback, t)`. What has been covered is kept in `_runs/schedule.json` (rule id → last
//! firing run), written after each run; on start, every firing missed while the service was
//! down is run in order (marked `catch-up` in the run records), going back at most
//! `catch_up_max`. A rule seen for the first time starts at the next firing. Rules firing at the
//! same time with the same lookback run together, as one run. Every tick also delivers alerts
//! still pending for a sink that was down.
//!
//! A firing's window is evaluated once the data it reads is complete (the watermarks of its
//! tables and sources passed the window's end plus the rule's lateness, [`crate::watermark`]);
//! until then it waits in `_runs/due.json`. A window already evaluated becomes due again when a
//! later commit adds records with event times inside it (late data, looked for over the windows
//! that ended in the last [`LATE_DATA_HORIZON`], every [`LATE_CHECK_TICKS`] ticks); its re-evaluation raises only new findings and
//! closes the alerts it no longer supports.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, DurationRound, Utc};
use tracing::{error, info, warn};

use crate::alerts::{load_suppressions, AlertStore};
use crate::catalog::Catalog;
use crate::cron::Cron;
use crate::rules::{load_rules, Rule};
use crate::runner::run_window;
use crate::sinks::{deliver_all, Sink};

/// What `serve` runs.
pub struct ServeOptions {
    pub site: crate::site::Site,
    pub policy: PathBuf,
    pub geoip: Option<PathBuf>,
    pub rules_dir: PathBuf,
    /// Only these rules (all when empty).
    pub only: Vec<String>,
    pub sinks: Vec<Sink>,
    /// How often the scheduler wakes up.
    pub tick: Duration,
    /// How far back missed firings are caught up.
    pub catch_up_max: Duration,
    /// Run ingest in the same process.
    pub ingest: Option<flowaudit_ingest::config::IngestConfig>,
    /// Write the nightly report.
    pub report: Option<NightlyReport>,
    /// Run the rules and the nightly report (false: only ingest and/or Flight SQL).
    pub scheduler: bool,
    /// Serve the read-only catalog over Flight SQL.
    pub flight: Option<FlightServe>,
    /// Compact the warehouse's closed hours on a schedule.
    pub compact: Option<ScheduledCompaction>,
    /// Write checkpoints to the auditor's witness on an interval.
    pub checkpoint: Option<ScheduledCheckpoint>,
    /// The lateness of rules that name none.
    pub lateness: Duration,
}

/// Late data is looked for every this many ticks.
pub const LATE_CHECK_TICKS: u32 = 6;

/// How far back windows already evaluated are watched for late data.
pub const LATE_DATA_HORIZON: chrono::Duration = chrono::Duration::days(2);

/// A rule window waiting to be evaluated: its data is not complete yet, or late data arrived.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Due {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub rule_id: String,
    /// `schedule`, `catch-up` or `late-data`.
    pub trigger: String,
}

/// A window a rule evaluated, and what it saw (from the run records).
#[derive(Debug, Clone)]
pub struct Evaluated {
    pub rule_id: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub tables: Vec<String>,
    pub positions: Vec<crate::runner::Position>,
}

/// The windows evaluated in full (`complete` or `incomplete`) by the run records `runs` whose
/// end is after `since`; the latest evaluation of each.
pub fn evaluated_windows(runs: &[serde_json::Value], since: DateTime<Utc>) -> Vec<Evaluated> {
    let mut latest: BTreeMap<(String, DateTime<Utc>, DateTime<Utc>), Evaluated> = BTreeMap::new();
    for e in crate::ledger::evaluations(runs) {
        let (from, to) = e.window;
        if to < since || !matches!(e.coverage.as_str(), "complete" | "incomplete") {
            continue;
        }
        latest.insert(
            (e.rule_id.clone(), from, to),
            Evaluated {
                rule_id: e.rule_id,
                from,
                to,
                tables: e.tables,
                positions: e.positions,
            },
        );
    }
    latest.into_values().collect()
}

fn due_path(state: &Path) -> PathBuf {
    state.join("_runs").join("due.json")
}

fn load_due(state: &Path) -> anyhow::Result<Vec<Due>> {
    let p = due_path(state);
    match std::fs::read_to_string(&p) {
        Ok(t) => serde_json::from_str(&t).with_context(|| format!("parsing {}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

fn save_due(state: &Path, due: &[Due]) -> anyhow::Result<()> {
    write_json(&due_path(state), &due)
}

/// Write `value` as JSON to `p` atomically (a fsynced temporary file renamed over it).
fn write_json(p: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    std::fs::create_dir_all(p.parent().expect("parent"))?;
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, p).with_context(|| format!("renaming to {}", p.display()))?;
    Ok(())
}

/// What the scheduler carries from tick to tick.
#[derive(Default)]
struct Pending {
    due: Vec<Due>,
    evaluated: Vec<Evaluated>,
    late_checked: Option<std::time::Instant>,
}

/// Checkpoints every `interval` (`[checkpoint]`), on a thread of their own: a TSA or witness that
/// is slow or down delays neither ingest nor the rules.
pub struct ScheduledCheckpoint {
    pub interval: Duration,
    pub settings: crate::checkpoint::Settings,
}

/// Write a checkpoint now and every `interval` until `shutdown` is set.
fn checkpointer(c: ScheduledCheckpoint, shutdown: Arc<AtomicBool>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "checkpoints: cannot start the runtime; no checkpoints are written");
            return;
        }
    };
    info!(witness = %c.settings.witness, interval_s = c.interval.as_secs(), "checkpoints on");
    while !shutdown.load(Ordering::Relaxed) {
        match rt.block_on(crate::checkpoint::write(&c.settings)) {
            Ok(w) => {
                let m = flowaudit_ingest::metrics::metrics();
                m.checkpoints.inc();
                m.checkpoint_timestamp
                    .set(Utc::now().timestamp_millis() as f64 / 1000.0);
                info!(
                    seq = w.seq,
                    stamped = ?w.stamped,
                    unstamped = w.unstamped.len(),
                    "checkpoint written"
                )
            }
            Err(e) => {
                flowaudit_ingest::metrics::metrics()
                    .checkpoint_failures
                    .inc();
                error!(error = %e, "checkpoint failed; retrying at the next interval")
            }
        }
        let until = std::time::Instant::now() + c.interval;
        while std::time::Instant::now() < until && !shutdown.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Compaction on a schedule (`[compact]`).
pub struct ScheduledCompaction {
    pub cron: Cron,
    pub options: flowaudit_ingest::compact::CompactOptions,
}

/// The key the last compaction firing is kept under in `schedule.json`.
const COMPACT_KEY: &str = "compaction";

impl ServeOptions {
    /// The state directory (the schedule, alerts and run records): the scheduler's.
    fn state(&self) -> anyhow::Result<&Path> {
        self.site.state_dir().map_err(anyhow::Error::msg)
    }
}

/// The Flight SQL endpoint run alongside.
pub struct FlightServe {
    pub options: crate::flight::FlightOptions,
    pub limits: crate::sql::Limits,
}

/// The nightly report: at each firing, the report of the previous UTC day is written to
/// `<out>/<day>/` (reproducible, signed when a key is given, compared with the report of the day
/// before when there is one).
pub struct NightlyReport {
    pub cron: Cron,
    pub out: PathBuf,
    pub sign_key: Option<PathBuf>,
    /// The auditor's witness, whose checkpoints each report names.
    pub witness: Option<flowaudit_ingest::warehouse::Location>,
}

/// The key the nightly report's last firing is kept under in `schedule.json`.
const REPORT_KEY: &str = "nightly-report";

fn state_path(state: &Path) -> PathBuf {
    state.join("_runs").join("schedule.json")
}

fn load_state(state: &Path) -> anyhow::Result<BTreeMap<String, DateTime<Utc>>> {
    let p = state_path(state);
    match std::fs::read_to_string(&p) {
        Ok(t) => serde_json::from_str(&t).with_context(|| format!("parsing {}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

fn save_state(dir: &Path, state: &BTreeMap<String, DateTime<Utc>>) -> anyhow::Result<()> {
    write_json(&state_path(dir), state)
}

/// The firings due for `rule` after `last` up to `now`, oldest first.
pub fn due_firings(
    cron: &Cron,
    last: DateTime<Utc>,
    now: DateTime<Utc>,
    catch_up_max: Duration,
) -> Vec<DateTime<Utc>> {
    let floor = now - chrono::Duration::from_std(catch_up_max).unwrap_or_default();
    let mut t = last.max(floor - chrono::Duration::minutes(1));
    let mut out = Vec::new();
    while let Some(next) = cron.next_after(t) {
        if next > now {
            break;
        }
        out.push(next);
        t = next;
    }
    out
}

/// Run the scheduler until `shutdown` is set.
pub fn serve(mut opts: ServeOptions, shutdown: Arc<AtomicBool>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    let checkpoints = opts.checkpoint.take().map(|c| {
        let flag = shutdown.clone();
        std::thread::Builder::new()
            .name("checkpoints".into())
            .spawn(move || checkpointer(c, flag))
            .expect("spawning the checkpoint thread")
    });
    let ingest = opts.ingest.clone().map(|cfg| {
        let flag = shutdown.clone();
        info!("ingest runs alongside the scheduler");
        std::thread::Builder::new()
            .name("ingest".into())
            .spawn(move || flowaudit_ingest::consumer::run(&cfg, flag))
            .expect("spawning the ingest thread")
    });
    let mut ingest = ingest;
    let mut flight = match &opts.flight {
        Some(f) => Some(start_flight(&rt, &opts, f, shutdown.clone())?),
        None => None,
    };
    let mut state = if opts.scheduler {
        load_state(opts.state()?)?
    } else {
        BTreeMap::new()
    };
    let mut pending = Pending::default();
    if opts.scheduler {
        pending.due = load_due(opts.state()?)?;
        let runs = crate::runner::read_runs(opts.state()?).map_err(anyhow::Error::msg)?;
        pending.evaluated = evaluated_windows(&runs, Utc::now() - LATE_DATA_HORIZON);
    }
    if opts.scheduler {
        info!(warehouse = %opts.site, rules = %opts.rules_dir.display(), "scheduler started");
    }
    // The policy the scheduler's catalog loaded (for /readyz), once it did.
    let mut loaded: Option<String> = None;
    while !shutdown.load(Ordering::Relaxed) {
        if flight.as_ref().is_some_and(|h| h.is_finished()) {
            let h = flight.take().expect("checked");
            rt.block_on(h)
                .context("the Flight SQL task panicked")?
                .context("Flight SQL")?;
            if !shutdown.load(Ordering::Relaxed) {
                bail!("Flight SQL stopped unexpectedly");
            }
        }
        if ingest.as_ref().is_some_and(|h| h.is_finished()) {
            let h = ingest.take().expect("checked");
            match h.join() {
                Ok(Ok(summary)) => {
                    crate::cli::print_summary(&summary);
                    if !shutdown.load(Ordering::Relaxed) {
                        bail!("ingest stopped unexpectedly");
                    }
                }
                Ok(Err(e)) => return Err(e).context("ingest"),
                Err(_) => bail!("the ingest thread panicked"),
            }
        }
        if !opts.scheduler {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let ready = flowaudit_ingest::metrics::readiness();
        if loaded.is_none() {
            // What the rules and the report read, for /readyz (each tick opens the catalog
            // again, and so reads the policy as it is then).
            match rt.block_on(Catalog::open_at(
                &opts.site,
                &opts.policy,
                opts.geoip.as_deref(),
            )) {
                Ok(c) => {
                    let what = format!(
                        "{} (fingerprint {})",
                        opts.policy.display(),
                        crate::cluster::fingerprint(&c)
                    );
                    ready.set("scheduler", Ok(what.clone()));
                    loaded = Some(what);
                }
                Err(e) => {
                    ready.set("scheduler", Err(format!("the catalog does not open: {e}")));
                    error!(error = %e, "the policy and the warehouse's tables could not be loaded; retrying next tick");
                }
            }
        }
        let ticked = rt.block_on(tick(&opts, &mut state, &mut pending, &shutdown));
        flowaudit_ingest::metrics::metrics()
            .windows_due
            .set(pending.due.len() as i64);
        if let Some(what) = &loaded {
            ready.set(
                "scheduler",
                match &ticked {
                    Ok(()) => Ok(what.clone()),
                    Err(e) => Err(format!("the last tick failed: {e:#}")),
                },
            );
        }
        if let Err(e) = ticked {
            flowaudit_ingest::metrics::metrics()
                .scheduler_ticks_failed
                .inc();
            error!(
                error = format!("{e:#}"),
                "scheduler tick failed; retrying next tick"
            );
        }
        let until = std::time::Instant::now() + opts.tick;
        while std::time::Instant::now() < until && !shutdown.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    info!("stopping");
    if let Some(h) = checkpoints {
        if h.join().is_err() {
            error!("the checkpoint thread panicked");
        }
    }
    if let Some(h) = flight {
        rt.block_on(h)
            .context("the Flight SQL task panicked")?
            .context("Flight SQL")?;
    }
    if let Some(h) = ingest {
        match h.join() {
            Ok(Ok(summary)) => crate::cli::print_summary(&summary),
            Ok(Err(e)) => return Err(e).context("ingest"),
            Err(_) => bail!("the ingest thread panicked"),
        }
    }
    Ok(())
}

/// Open the engine and start the Flight SQL server on `rt`; it stops when `shutdown` is set.
fn start_flight(
    rt: &tokio::runtime::Runtime,
    opts: &ServeOptions,
    f: &FlightServe,
    shutdown: Arc<AtomicBool>,
) -> anyhow::Result<tokio::task::JoinHandle<Result<(), crate::flight::FlightServerError>>> {
    let engine = rt
        .block_on(crate::sql::SqlEngine::open(
            &opts.site,
            &opts.policy,
            opts.geoip.as_deref(),
            f.limits,
        ))
        .context("opening the catalog for Flight SQL")?;
    flowaudit_ingest::metrics::readiness().set(
        "flight",
        Ok(format!("{} (the catalog)", opts.policy.display())),
    );
    let options = f.options.clone();
    let stop = async move {
        while !shutdown.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    Ok(rt.spawn(crate::flight::serve(Arc::new(engine), options, stop)))
}

/// One scheduler tick: queue the firings that came due and the windows late data reopened,
/// evaluate those whose data is complete, then deliver what is pending.
async fn tick(
    opts: &ServeOptions,
    state: &mut BTreeMap<String, DateTime<Utc>>,
    pending: &mut Pending,
    shutdown: &AtomicBool,
) -> anyhow::Result<()> {
    let rules: Vec<Rule> = load_rules(&opts.rules_dir)?
        .into_iter()
        .filter(|r| opts.only.is_empty() || opts.only.contains(&r.id))
        .collect();
    let now = Utc::now();
    let mut latest: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
    let mut queued = Vec::new();
    for r in &rules {
        let cron: Cron = r.schedule.parse().map_err(anyhow::Error::msg)?;
        let Some(last) = state.get(&r.id).copied() else {
            let start = now.duration_trunc(chrono::Duration::minutes(1))?;
            info!(rule = %r.id, next = ?cron.next_after(start), "new rule: first run at its next firing");
            state.insert(r.id.clone(), start);
            save_state(opts.state()?, state)?;
            continue;
        };
        let firings = due_firings(&cron, last, now, opts.catch_up_max);
        if let Some(l) = firings.last() {
            latest.insert(r.id.clone(), *l);
        }
        for t in firings {
            queued.push((r.id.clone(), t, r.lookback));
        }
    }
    for (id, t, lookback) in queued {
        let d = Due {
            from: t - chrono::Duration::from_std(lookback)?,
            to: t,
            trigger: if latest.get(&id) == Some(&t) {
                "schedule"
            } else {
                "catch-up"
            }
            .into(),
            rule_id: id.clone(),
        };
        if !pending
            .due
            .iter()
            .any(|x| x.rule_id == d.rule_id && x.from == d.from && x.to == d.to)
        {
            pending.due.push(d);
        }
        state.insert(id, t);
    }
    // Windows waiting longer than catch-up goes back are given up (the coverage statement
    // shows them as not evaluated).
    let floor = now - chrono::Duration::from_std(opts.catch_up_max)?;
    pending.due.retain(|d| {
        let keep = d.to >= floor;
        if !keep {
            warn!(rule = %d.rule_id, from = %d.from, to = %d.to, "a window waited longer than catch_up_max for complete data: given up, not evaluated");
        }
        keep
    });
    // Late data: every few ticks (a minute at the default tick), look for commits that added records inside windows
    // already evaluated.
    if pending
        .late_checked
        .is_none_or(|t| t.elapsed() >= opts.tick * LATE_CHECK_TICKS)
        && !pending.evaluated.is_empty()
    {
        pending.late_checked = Some(std::time::Instant::now());
        pending
            .evaluated
            .retain(|e| e.to >= now - LATE_DATA_HORIZON);
        let log = flowaudit_ingest::warehouse::read_log(&opts.site.tables).await?;
        for e in &pending.evaluated {
            if !rules.iter().any(|r| r.id == e.rule_id)
                || pending
                    .due
                    .iter()
                    .any(|d| d.rule_id == e.rule_id && d.from == e.from && d.to == e.to)
            {
                continue;
            }
            let late = crate::ledger::late_files(&log, &e.tables, &e.positions, e.from, e.to);
            if !late.is_empty() {
                info!(rule = %e.rule_id, from = %e.from, to = %e.to, files = late.len(), first = %late[0],
                      "late data: records committed after the window was evaluated fall inside it; due again");
                pending.due.push(Due {
                    from: e.from,
                    to: e.to,
                    rule_id: e.rule_id.clone(),
                    trigger: "late-data".into(),
                });
            }
        }
    }
    pending.due.sort();
    save_due(opts.state()?, &pending.due)?;
    save_state(opts.state()?, state)?;
    let suppressions = load_suppressions(&opts.policy.join("suppressions.csv"))?;
    // (window, trigger) → rules
    let mut groups: BTreeMap<(DateTime<Utc>, DateTime<Utc>, String), Vec<Rule>> = BTreeMap::new();
    for d in &pending.due {
        if let Some(r) = rules.iter().find(|r| r.id == d.rule_id) {
            groups
                .entry((d.from, d.to, d.trigger.clone()))
                .or_default()
                .push(r.clone());
        }
    }
    pending
        .due
        .retain(|d| rules.iter().any(|r| r.id == d.rule_id));
    for ((from, to, trigger), group) in groups {
        if shutdown.load(Ordering::Relaxed) {
            break;
        }
        let catalog = Catalog::open_at(&opts.site, &opts.policy, opts.geoip.as_deref()).await?;
        let mut store = AlertStore::open(opts.state()?)?;
        let before = store.len();
        let res = run_window(
            &catalog,
            &opts.site,
            &group,
            &mut store,
            &suppressions,
            crate::runner::Window {
                from,
                to,
                trigger: &trigger,
                evaluate: crate::runner::Evaluate::CompleteOnly,
                lateness: opts.lateness,
            },
        )
        .await?;
        for f in res.record.failed_rules() {
            warn!(rule = %f.id, error = f.error.as_deref().unwrap_or_default(), "rule failed");
        }
        let mut done = 0;
        for o in &res.record.rules {
            if o.coverage == "due" {
                continue;
            }
            done += 1;
            pending
                .due
                .retain(|d| !(d.rule_id == o.id && d.from == from && d.to == to));
            if o.coverage == "complete" {
                pending
                    .evaluated
                    .retain(|e| !(e.rule_id == o.id && e.from == from && e.to == to));
                pending.evaluated.push(Evaluated {
                    rule_id: o.id.clone(),
                    from,
                    to,
                    tables: o.tables.clone(),
                    positions: res.record.positions.clone(),
                });
            }
        }
        if done > 0 {
            info!(from = %from, to = %to, trigger, rules = done, raised = res.raised.len(), closed = res.closed.len(),
                  suppressed = res.suppressed.len(), run = %res.record.run_id, "run recorded");
        }
        save_due(opts.state()?, &pending.due)?;
        deliver_all(&store, &opts.sinks, before);
    }
    if let Some(rep) = &opts.report {
        nightly_report(opts, rep, state, now).await?;
    }
    if let Some(c) = &opts.compact {
        scheduled_compaction(opts, c, state, now)?;
    }
    // Deliver anything still pending (a sink that was down may be back).
    if !opts.sinks.is_empty() && opts.state()?.join("_alerts").is_dir() {
        let store = AlertStore::open(opts.state()?)?;
        let len = store.len();
        deliver_all(&store, &opts.sinks, len);
    }
    Ok(())
}

/// The last firing of the job `key`; the first time, `None`, and now (to the minute) is recorded
/// as its start (its first run is at its next firing).
fn last_firing(
    opts: &ServeOptions,
    state: &mut BTreeMap<String, DateTime<Utc>>,
    key: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<DateTime<Utc>>> {
    if let Some(last) = state.get(key) {
        return Ok(Some(*last));
    }
    state.insert(
        key.into(),
        now.duration_trunc(chrono::Duration::minutes(1))?,
    );
    save_state(opts.state()?, state)?;
    Ok(None)
}

/// Compact when a firing is due (one run for any number of missed firings).
fn scheduled_compaction(
    opts: &ServeOptions,
    c: &ScheduledCompaction,
    state: &mut BTreeMap<String, DateTime<Utc>>,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let Some(last) = last_firing(opts, state, COMPACT_KEY, now)? else {
        return Ok(());
    };
    let Some(t) = due_firings(&c.cron, last, now, opts.catch_up_max).pop() else {
        return Ok(());
    };
    // The warehouse writer runs its own runtime: on a thread of its own, not on this task's.
    let location = opts.site.tables.clone();
    let done = std::thread::scope(|s| {
        s.spawn(|| flowaudit_ingest::compact::compact(&location, &c.options))
            .join()
    })
    .map_err(|_| anyhow::anyhow!("the compaction thread panicked"))?
    .with_context(|| format!("compacting {location}"))?;
    for d in &done {
        if d.written > 0 {
            info!(table = d.table, replaced = d.replaced, written = d.written, rows = d.rows, version = ?d.version, "compacted");
        }
    }
    state.insert(COMPACT_KEY.into(), t);
    save_state(opts.state()?, state)
}

/// Write the reports whose firings are due (after the rules of this tick have run).
async fn nightly_report(
    opts: &ServeOptions,
    rep: &NightlyReport,
    state: &mut BTreeMap<String, DateTime<Utc>>,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let Some(last) = last_firing(opts, state, REPORT_KEY, now)? else {
        return Ok(());
    };
    for t in due_firings(&rep.cron, last, now, opts.catch_up_max) {
        let day = t.date_naive() - chrono::Duration::days(1);
        let out = rep.out.join(day.to_string());
        let previous = rep
            .out
            .join((day - chrono::Duration::days(1)).to_string())
            .join("report.json");
        let o = crate::report::ReportOptions {
            site: opts.site.clone(),
            policy: opts.policy.clone(),
            geoip: opts.geoip.clone(),
            rules_dir: opts.rules_dir.clone(),
            from: day,
            to: day,
            reproducible: true,
            previous: previous.is_file().then_some(previous),
            witness: rep.witness.clone(),
        };
        let r = crate::report::build(&o).await.map_err(anyhow::Error::msg)?;
        crate::report::write(&r, &out).map_err(anyhow::Error::msg)?;
        if let Some(k) = &rep.sign_key {
            crate::signing::sign(&out, &r, k).map_err(anyhow::Error::msg)?;
        }
        flowaudit_ingest::metrics::metrics().reports.inc();
        info!(day = %day, out = %out.display(), verdict = r["summary"]["verdict"].as_str().unwrap_or_default(), "nightly report written");
        state.insert(REPORT_KEY.into(), t);
        save_state(opts.state()?, state)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missed_firings_are_caught_up_within_the_limit() {
        let c: Cron = "*/15 * * * *".parse().unwrap();
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let due = due_firings(
            &c,
            t("2026-11-21T10:00:00Z"),
            t("2026-11-21T11:07:00Z"),
            Duration::from_secs(86_400),
        );
        assert_eq!(
            due,
            [
                t("2026-11-21T10:15:00Z"),
                t("2026-11-21T10:30:00Z"),
                t("2026-11-21T10:45:00Z"),
                t("2026-11-21T11:00:00Z")
            ]
        );
        // Down for three days, catch up at most one.
        let due = due_firings(
            &c,
            t("2026-11-18T10:00:00Z"),
            t("2026-11-21T10:00:00Z"),
            Duration::from_secs(86_400),
        );
        assert_eq!(due.len(), 97);
        assert_eq!(due[0], t("2026-11-20T10:00:00Z"));
        assert!(due_firings(
            &c,
            t("2026-11-21T11:00:00Z"),
            t("2026-11-21T11:07:00Z"),
            Duration::from_secs(86_400)
        )
        .is_empty());
    }
}
