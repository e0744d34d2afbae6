use actor_orm::Model;

#[derive(Model, Clone)]
struct Grid {
    #[orm(primary_key)]
    id: i64,
    cells: Vec<Vec<i32>>,
}

fn main() {}
