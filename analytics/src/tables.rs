//! The warehouse's Delta tables as DataFusion tables: delta-rs's table provider (partition
//! pruning on `date` and `hour`, file skipping on statistics), at the table's latest version at
//! each scan, so a long-lived session (the SQL shell, Flight SQL, `serve`) sees new commits. The
//! columns keep the types the rules were written against (the table's Arrow schema, then `date`
//! and `hour` as strings): what the provider returns differently (dictionary-encoded partition
//! values, view types) is cast back.
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::expressions::{cast, Column};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::ExecutionPlan;
use deltalake::DeltaTable;
use flowaudit_ingest::schema::Table;
use flowaudit_ingest::warehouse::Location;
use tokio::sync::Mutex;

/// The columns a warehouse table has in SQL: its Arrow schema, then `date` and `hour`.
pub fn sql_schema(table: Table) -> SchemaRef {
    let mut fields: Vec<Field> = table
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("date", DataType::Utf8, false));
    fields.push(Field::new("hour", DataType::Utf8, false));
    Arc::new(Schema::new(fields))
}

/// One Delta table of the warehouse, read at its latest version.
#[derive(Debug)]
pub struct DeltaWarehouseTable {
    name: &'static str,
    schema: SchemaRef,
    table: Mutex<DeltaTable>,
}

fn dferr(e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::External(e.to_string().into())
}

impl DeltaWarehouseTable {
    /// Open `table` of the warehouse at `location`; `None` if it has no Delta log yet.
    pub async fn open(location: &Location, table: Table) -> Result<Option<Self>> {
        Self::open_named(location, table.name(), sql_schema(table)).await
    }

    /// Open the Delta table `name` of the warehouse, whose SQL columns are `schema`; `None` if it
    /// has no Delta log yet.
    pub async fn open_named(
        location: &Location,
        name: &'static str,
        schema: SchemaRef,
    ) -> Result<Option<Self>> {
        flowaudit_ingest::warehouse::register_s3();
        if !flowaudit_ingest::warehouse::has_log(location, name)
            .await
            .map_err(dferr)?
        {
            return Ok(None);
        }
        let url = location.table_url(name).map_err(dferr)?;
        let (store, _) = location.store().map_err(dferr)?;
        let mut dt = deltalake::DeltaTableBuilder::from_url(url.clone())
            .map_err(dferr)?
            .with_storage_backend(store, url)
            .build()
            .map_err(dferr)?;
        match dt.load().await {
            Ok(()) => {}
            Err(deltalake::DeltaTableError::NotATable(_)) => return Ok(None),
            Err(e) => return Err(dferr(format!("{name}: {e}"))),
        }
        Ok(Some(Self {
            name,
            schema,
            table: Mutex::new(dt),
        }))
    }

    async fn current(&self) -> Result<Arc<dyn TableProvider>> {
        let mut dt = self.table.lock().await;
        dt.update_incremental(None)
            .await
            .map_err(|e| dferr(format!("{}: {e}", self.name)))?;
        dt.table_provider()
            .await
            .map_err(|e| dferr(format!("{}: {e}", self.name)))
    }
}

#[async_trait]
impl TableProvider for DeltaWarehouseTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Filters are re-applied above the scan: pruning in the scan is an optimisation only.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let inner = self.current().await?;
        {
            let dt = self.table.lock().await;
            dt.update_datafusion_session(state).map_err(dferr)?;
        }
        let names: Vec<&str> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        let inner_schema = inner.schema();
        let inner_names: Vec<&str> = inner_schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        if names != inner_names {
            return Err(DataFusionError::Plan(format!(
                "the Delta table {} has columns {inner_names:?}, expected {names:?}",
                self.name
            )));
        }
        let plan = inner.scan(state, projection, filters, limit).await?;
        let wanted: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let got = plan.schema();
        let mut exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = Vec::with_capacity(wanted.len());
        let mut same = got.fields().len() == wanted.len();
        for (i, w) in wanted.iter().enumerate() {
            let want = self.schema.field(*w);
            let col: Arc<dyn PhysicalExpr> = Arc::new(Column::new(want.name(), i));
            let have = got.field(i).data_type();
            if have == want.data_type() {
                exprs.push((col, want.name().clone()));
            } else {
                same = false;
                exprs.push((
                    cast(col, &got, want.data_type().clone())?,
                    want.name().clone(),
                ));
            }
        }
        if same {
            return Ok(plan);
        }
        Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
    }
}
