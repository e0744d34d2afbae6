use actor_orm::{Model, Session};

#[derive(Model, Clone)]
#[orm(table_name = "film_list", read_only)]
struct FilmListRow {
    film_id: i32,
    title: String,
}

#[derive(Model, Clone)]
#[orm(table_name = "payment")]
struct Payment {
    #[orm(primary_key)]
    payment_id: i32,
    #[orm(primary_key)]
    paid_on: i32,
}

async fn misuse(s: Session, row: FilmListRow) {
    let _ = s.save(row).await;
    let _ = s.get::<Payment>(1).await;
}

fn main() {}
