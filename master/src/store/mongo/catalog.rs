//! The MongoDB store's spiders, nodes and schedules.

use super::*;
use crate::store::CatalogStore;

#[async_trait::async_trait]
impl CatalogStore for MongoStore {
    async fn put_spider(&self, spider: &Spider) -> Result<()> {
        let what = format!("spider {:?}", spider.name);
        put_named(
            self.spiders(),
            spider.id.to_string(),
            &spider.name,
            record(spider),
            what,
        )
        .await
    }

    async fn spider_by_name(&self, name: &str) -> Result<Option<Spider>> {
        let found = self
            .spiders()
            .find_one(doc! {"name": name})
            .await
            .map_err(db)?;
        found.map(from_data).transpose()
    }

    async fn list_spiders(&self) -> Result<Vec<Spider>> {
        self.all_records(self.spiders(), doc! {"name": 1}).await
    }

    async fn delete_spider(&self, id: SpiderId) -> Result<bool> {
        let deleted = self
            .spiders()
            .delete_one(doc! {"_id": id.to_string()})
            .await
            .map_err(db)?;
        Ok(deleted.deleted_count > 0)
    }

    async fn put_node(&self, node: &Node) -> Result<()> {
        let doc = doc! {"_id": &node.name, "data": record(node)};
        self.nodes()
            .replace_one(doc! {"_id": &node.name}, doc)
            .upsert(true)
            .await
            .map(drop)
            .map_err(db)
    }

    async fn list_nodes(&self) -> Result<Vec<Node>> {
        self.all_records(self.nodes(), doc! {"_id": 1}).await
    }

    async fn delete_node(&self, name: &str) -> Result<bool> {
        let deleted = self
            .nodes()
            .delete_one(doc! {"_id": name})
            .await
            .map_err(db)?;
        Ok(deleted.deleted_count > 0)
    }

    async fn put_schedule(&self, schedule: &Schedule) -> Result<()> {
        let what = format!("schedule {:?}", schedule.name);
        put_named(
            self.schedules(),
            schedule.id.to_string(),
            &schedule.name,
            record(schedule),
            what,
        )
        .await
    }

    async fn get_schedule(&self, id: ScheduleId) -> Result<Option<Schedule>> {
        let found = self
            .schedules()
            .find_one(doc! {"_id": id.to_string()})
            .await
            .map_err(db)?;
        found.map(from_data).transpose()
    }

    async fn list_schedules(&self) -> Result<Vec<Schedule>> {
        self.all_records(self.schedules(), doc! {"name": 1}).await
    }

    async fn delete_schedule(&self, id: ScheduleId) -> Result<bool> {
        let deleted = self
            .schedules()
            .delete_one(doc! {"_id": id.to_string()})
            .await
            .map_err(db)?;
        Ok(deleted.deleted_count > 0)
    }
}
