//! Several writes of one commit in one round trip.
//!
//! A commit writes several tables: a new order writes its row, its lines, its events, its
//! idempotency record and its saga; a saga step writes the order, the saga, the step rows and
//! the plugins' records. Sent one statement at a time, each is a client-server round trip,
//! and on PostgreSQL the statements' round trips, not their rows, were most of an order's
//! cost (docs/benchmarks.md). A [`Batch`] collects a commit's statements; PostgreSQL runs
//! them as the data-modifying common table expressions of one statement (one round trip,
//! and atomic on its own), SQLite one after the other (it runs in process: there is no round
//! trip to save). Either way the batch answers how many rows each part changed, and the
//! store checks those counts afterwards (a version that moved, a key that already existed),
//! rolling its transaction back on a failed check, as it did when each statement ran alone.
//!
//! What one statement changes for the parts (PostgreSQL):
//! - they all read the database as it was when the statement began: no part may depend on
//!   reading what an earlier part of the same batch wrote (a part may still reference a row
//!   an earlier part inserts: foreign keys are checked when the whole statement ends);
//! - they run in the order they were pushed: the statement reads each part's count to its
//!   end, in order, so row locks are taken in the same order as before;
//! - a part that fails (a unique violation, a check) fails the whole statement: nothing of
//!   the batch is written, and the counts that would have told why (an order update that
//!   lost to a concurrent writer) are lost with it. A part that would fail only because an
//!   earlier part changed nothing (a stale writer's events, already in the outbox under the
//!   same ids) is therefore *guarded* by that part: it runs only when that part changed a row.
//!
//! A batch may also *expect* counts of its parts ([`Batch::expect`]) and run all or nothing
//! ([`Batch::run_all_or_nothing`]). On PostgreSQL the statement then ends by checking them and
//! aborts itself when one is off (migration 0016), so it writes nothing and needs no
//! transaction around it to be undone: a saga step's commit is then one round trip, not
//! `BEGIN`, the batch, a statement per stock counter and `COMMIT`, and a hot counter's row is
//! held only while the server commits, never across a round trip to the host.

use super::{ConnOf, Dialect, Q, Rows};

/// What binds one statement's parameters, in order (`$1`, `$2`, ...).
pub(crate) type Binder<'q, D> = Box<dyn FnOnce(Q<'q, D>) -> Q<'q, D> + Send + 'q>;

/// One writing statement: its text, with parameters numbered from `$1`, and its binder.
pub(crate) struct Statement<'q, D: Dialect> {
    pub sql: String,
    pub bind: Binder<'q, D>,
}

/// In a guarded statement's text, the condition "the guarding part changed a row".
pub(crate) const GUARD: &str = "$guard";

impl<'q, D: Dialect> Statement<'q, D> {
    /// The statement as a query of its own.
    pub(crate) fn query(self) -> Q<'q, D> {
        (self.bind)(D::query(sqlx::AssertSqlSafe(self.sql)))
    }
}

/// One part of a [`Batch`].
pub(crate) enum Part<'q, D: Dialect> {
    Statement(Statement<'q, D>),
    /// A bulk insert ([`Dialect::insert_rows`]).
    Rows(Rows<'q>),
}

/// A part, and the earlier part that guards it (see the module docs).
pub(crate) struct Guarded<'q, D: Dialect> {
    pub part: Part<'q, D>,
    pub guard: Option<PartId>,
}

/// The statements of one commit, in order (see the module docs).
pub(crate) struct Batch<'q, D: Dialect> {
    parts: Vec<Guarded<'q, D>>,
    expected: Vec<(PartId, u64)>,
}

/// The SQLSTATE with which a one-statement batch aborts when a part changed another number
/// of rows than expected (raised by `oms_batch_expectation_failed()`, migration 0016).
const EXPECTATION_FAILED: &str = "OMSB1";

/// Which part of a [`Batch`] a count belongs to: its position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PartId(pub(crate) usize);

/// How many rows each part of a [`Batch`] changed.
#[derive(Debug)]
pub(crate) struct Counts(Vec<u64>);

impl Counts {
    pub(crate) fn of(&self, part: PartId) -> u64 {
        self.0.get(part.0).copied().unwrap_or(0)
    }
}

impl<'q, D: Dialect> Default for Batch<'q, D> {
    fn default() -> Self {
        Self {
            parts: Vec::new(),
            expected: Vec::new(),
        }
    }
}

impl<'q, D: Dialect> Batch<'q, D> {
    /// Adds a statement: `sql` with parameters `$1`... bound by `bind`.
    pub(crate) fn push(
        &mut self,
        sql: impl Into<String>,
        bind: impl FnOnce(Q<'q, D>) -> Q<'q, D> + Send + 'q,
    ) -> PartId {
        self.add(statement(sql, bind), None)
    }

    /// Adds a statement that runs only when part `guard` changed a row; `sql` holds [`GUARD`]
    /// once, where that condition goes (a `WHERE` clause).
    pub(crate) fn push_guarded(
        &mut self,
        guard: PartId,
        sql: impl Into<String>,
        bind: impl FnOnce(Q<'q, D>) -> Q<'q, D> + Send + 'q,
    ) -> PartId {
        self.add(statement(sql, bind), Some(guard))
    }

    /// Adds a bulk insert (none when `rows` is empty: its count is 0), guarded by `guard`
    /// when given.
    pub(crate) fn push_rows(&mut self, rows: Rows<'q>, guard: Option<PartId>) -> PartId {
        self.add(Part::Rows(rows), guard)
    }

    fn add(&mut self, part: Part<'q, D>, guard: Option<PartId>) -> PartId {
        self.parts.push(Guarded { part, guard });
        PartId(self.parts.len() - 1)
    }

    /// Adds every part of `other` after this batch's, with its guards and expectations:
    /// several commits' batches as one (see `sql::coalesce`).
    pub(crate) fn append(&mut self, other: Batch<'q, D>) {
        let offset = self.parts.len();
        let shift = |part: PartId| PartId(part.0 + offset);
        self.parts.extend(
            other
                .parts
                .into_iter()
                .map(|Guarded { part, guard }| Guarded {
                    part,
                    guard: guard.map(shift),
                }),
        );
        self.expected.extend(
            other
                .expected
                .into_iter()
                .map(|(part, rows)| (shift(part), rows)),
        );
    }

    /// Requires part `part` to change exactly `rows` rows when the batch runs with
    /// [`Self::run_all_or_nothing`].
    pub(crate) fn expect(&mut self, part: PartId, rows: u64) {
        self.expected.push((part, rows));
    }

    /// Runs the batch on `conn` (see the module docs) and answers each part's count.
    pub(crate) async fn run(self, conn: &mut ConnOf<D>) -> Result<Counts, sqlx::Error> {
        D::run_batch(conn, self.parts, &[]).await.map(Counts)
    }

    /// Runs the batch and answers each part's count, or `None` when a part changed another
    /// number of rows than [`Self::expect`]ed. Where the batch is one statement
    /// ([`Dialect::ONE_STATEMENT_BATCH`]) it then wrote nothing, even outside a transaction
    /// (inside one, the statement's error has aborted that transaction); elsewhere its parts
    /// ran inside the caller's transaction, which must be rolled back.
    pub(crate) async fn run_all_or_nothing(
        self,
        conn: &mut ConnOf<D>,
    ) -> Result<Option<Counts>, sqlx::Error> {
        let counts = match D::run_batch(conn, self.parts, &self.expected).await {
            Ok(counts) => Counts(counts),
            Err(e) if expectation_failed(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let met = self
            .expected
            .iter()
            .all(|&(part, rows)| counts.of(part) == rows);
        Ok(met.then_some(counts))
    }
}

fn expectation_failed(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code == EXPECTATION_FAILED)
}

fn statement<'q, D: Dialect>(
    sql: impl Into<String>,
    bind: impl FnOnce(Q<'q, D>) -> Q<'q, D> + Send + 'q,
) -> Part<'q, D> {
    Part::Statement(Statement {
        sql: sql.into(),
        bind: Box::new(bind),
    })
}

/// `sql` with every parameter `$N` renumbered `$(N + offset)`, and the highest `N` it uses.
/// Quoted text (`'...'`, `"..."`) is left as it is. Used to put several statements'
/// parameters side by side in one.
pub(crate) fn shift_params(sql: &str, offset: usize) -> (String, usize) {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut highest = 0;
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                if c == q {
                    quote = None;
                }
                out.push(c);
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                out.push(c);
            }
            None if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) => {
                let mut n = 0usize;
                while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                    n = n * 10 + d as usize;
                    chars.next();
                }
                highest = highest.max(n);
                out.push('$');
                out.push_str(&(n + offset).to_string());
            }
            None => out.push(c),
        }
    }
    (out, highest)
}

#[cfg(test)]
mod tests {
    use super::shift_params;

    #[test]
    fn parameters_are_renumbered_outside_quotes_only() {
        let (sql, highest) = shift_params(
            "UPDATE t SET a = $1, b = '$2', \"$3\" = $12 WHERE c = $2",
            10,
        );
        assert_eq!(
            sql,
            "UPDATE t SET a = $11, b = '$2', \"$3\" = $22 WHERE c = $12"
        );
        assert_eq!(highest, 12);
        assert_eq!(shift_params("SELECT 1", 5), ("SELECT 1".to_owned(), 0));
    }
}
