use actor_orm::{Model, Session};

#[derive(Model, Clone)]
#[orm(table_name = "language", has_many(name = "films", model = Film, by = "language_id"))]
struct Language {
    #[orm(primary_key)]
    language_id: i32,
}

#[derive(Model, Clone)]
#[orm(table_name = "film")]
struct Film {
    #[orm(primary_key)]
    film_id: i32,
    #[orm(references = Language)]
    language_id: i32,
}

async fn misuse(s: Session) {
    // Films have a language, not films: Language::FILMS is loaded for languages.
    let _ = s.load(Film::query(), Language::FILMS).await;
}

fn main() {}
