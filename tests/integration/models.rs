//! Models shared by the core tests.

use actor_orm::{DbEnum, Model};
use serde::{Deserialize, Serialize};

#[derive(Model, Clone, Debug, PartialEq)]
#[orm(table_name = "users")]
pub struct User {
    #[orm(primary_key, auto_increment)]
    pub id: i64,
    #[orm(unique)]
    pub name: String,
    pub email: Option<String>,
    pub age: i32,
}

impl User {
    pub fn new(name: &str, age: i32) -> User {
        User {
            id: 0,
            name: name.into(),
            email: None,
            age,
        }
    }
}

#[derive(Model, Clone, Debug, PartialEq)]
#[orm(table_name = "posts")]
pub struct Post {
    #[orm(primary_key)]
    pub id: i64,
    #[orm(references = User)]
    pub author_id: i64,
    pub title: String,
    #[orm(default = "now()")]
    pub created_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Model, Clone, Debug, PartialEq)]
#[orm(table_name = "accounts")]
pub struct Account {
    #[orm(primary_key)]
    pub id: i64,
    pub balance: i64,
    #[orm(version)]
    pub version: i32,
}

#[derive(DbEnum, Clone, Copy, Debug, PartialEq)]
pub enum Color {
    Red,
    DarkBlue,
}

#[derive(DbEnum, Clone, Copy, Debug, PartialEq)]
#[orm(type_name = "mood")]
pub enum Mood {
    Happy,
    #[orm(rename = "so-so")]
    SoSo,
    Sad,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Settings {
    pub theme: String,
    pub sizes: Vec<u32>,
}

/// One column of every supported type.
#[derive(Model, Clone, Debug, PartialEq)]
#[orm(table_name = "everything")]
pub struct Everything {
    #[orm(primary_key)]
    pub id: uuid::Uuid,
    pub flag: bool,
    pub small: i16,
    pub medium: i32,
    pub big: i64,
    pub single: f32,
    pub double: f64,
    pub text: String,
    #[orm(max_length = 20)]
    pub short_text: String,
    pub bytes: Vec<u8>,
    pub day: chrono::NaiveDate,
    pub local_time: chrono::NaiveDateTime,
    pub instant: chrono::DateTime<chrono::Utc>,
    pub doc: serde_json::Value,
    #[orm(json)]
    pub settings: Settings,
    pub amount: rust_decimal::Decimal,
    pub color: Color,
    pub mood: Mood,
    pub numbers: Vec<i64>,
    pub words: Vec<String>,
    pub maybe_flag: Option<bool>,
    pub maybe_small: Option<i16>,
    pub maybe_big: Option<i64>,
    pub maybe_text: Option<String>,
    pub maybe_bytes: Option<Vec<u8>>,
    pub maybe_uuid: Option<uuid::Uuid>,
    pub maybe_day: Option<chrono::NaiveDate>,
    pub maybe_instant: Option<chrono::DateTime<chrono::Utc>>,
    pub maybe_doc: Option<serde_json::Value>,
    #[orm(json)]
    pub maybe_settings: Option<Settings>,
    pub maybe_amount: Option<rust_decimal::Decimal>,
    pub maybe_mood: Option<Mood>,
    pub maybe_numbers: Option<Vec<i32>>,
}

/// Creates the tables (and the enum type) the core tests use.
pub async fn create_schema(conn: &actor_orm::Connection) {
    use actor_orm::ddl;
    let mut sql = vec![ddl::create_enum::<Mood>().expect("pg enum")];
    sql.push(ddl::create_table::<User>());
    sql.push(ddl::create_table::<Post>());
    sql.push(ddl::create_table::<Account>());
    sql.push(ddl::create_table::<Everything>());
    conn.batch(&sql.join(";\n")).await.expect("create schema");
}
