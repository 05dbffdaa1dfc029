-- A database shaped like a real Supabase app (FoodBiz-AI), for scripts/bench.sh: auth, storage
-- and public schemas, 25 tables of very different sizes, btree, gin and partial indexes,
-- foreign keys, text, jsonb and timestamptz columns, and bytea of which about a quarter is
-- random (incompressible). `psql -v scale=1` gives about 1 GB on disk; `docs` is the number of
-- storage.objects rows (one per document of the benchmark's bucket).
\set ON_ERROR_STOP on
create extension if not exists pgcrypto;
create schema if not exists auth;
create schema if not exists storage;

create table auth.users (
  id uuid primary key, email text not null unique, encrypted_password text,
  raw_user_meta_data jsonb not null default '{}', created_at timestamptz not null,
  last_sign_in_at timestamptz);
create table auth.identities (
  id uuid primary key, user_id uuid not null references auth.users, provider text not null,
  identity_data jsonb not null, created_at timestamptz not null);
create table auth.sessions (
  id uuid primary key, user_id uuid not null references auth.users, created_at timestamptz not null,
  user_agent text, ip inet);
create table auth.refresh_tokens (
  id bigserial primary key, session_id uuid references auth.sessions, token text not null,
  revoked boolean not null default false, created_at timestamptz not null);
create table auth.audit_log_entries (
  id uuid primary key, payload jsonb not null, created_at timestamptz not null);
create table storage.buckets (id text primary key, name text not null, public boolean, created_at timestamptz);
create table storage.objects (
  id uuid primary key, bucket_id text references storage.buckets, name text not null,
  owner uuid, metadata jsonb, created_at timestamptz not null, unique (bucket_id, name));

create table public.restaurants (
  id serial primary key, name text not null, city text not null, cuisine text,
  settings jsonb not null default '{}', created_at timestamptz not null);
create table public.menus (
  id serial primary key, restaurant_id int not null references public.restaurants,
  title text not null, valid_from date);
create table public.menu_items (
  id serial primary key, menu_id int not null references public.menus, name text not null,
  description text, price_cents int not null, allergens text[], photo bytea);
create table public.customers (
  id bigserial primary key, user_id uuid references auth.users, name text not null,
  phone text, preferences jsonb, created_at timestamptz not null);
create table public.orders (
  id bigserial primary key, restaurant_id int not null references public.restaurants,
  customer_id bigint references public.customers, status text not null,
  total_cents int not null, note text, created_at timestamptz not null);
create table public.order_items (
  order_id bigint not null references public.orders, line int not null,
  menu_item_id int not null references public.menu_items, qty int not null,
  price_cents int not null, primary key (order_id, line));
create table public.payments (
  id bigserial primary key, order_id bigint not null references public.orders,
  provider text not null, amount_cents int not null, raw jsonb, paid_at timestamptz);
create table public.reviews (
  id bigserial primary key, restaurant_id int not null references public.restaurants,
  customer_id bigint references public.customers, stars smallint not null, body text,
  created_at timestamptz not null);
create table public.documents (
  id uuid primary key, object_id uuid references storage.objects, restaurant_id int references public.restaurants,
  title text not null, kind text not null, uploaded_at timestamptz not null);
create table public.document_chunks (
  id bigserial primary key, document_id uuid not null references public.documents,
  chunk int not null, content text not null, embedding bytea not null);
create table public.chat_sessions (
  id uuid primary key, customer_id bigint references public.customers, started_at timestamptz not null);
create table public.chat_messages (
  id bigserial primary key, session_id uuid not null references public.chat_sessions,
  role text not null, content text not null, tokens int, meta jsonb, created_at timestamptz not null);
create table public.suppliers (id serial primary key, name text not null, contact jsonb);
create table public.inventory (
  restaurant_id int not null references public.restaurants, sku text not null,
  supplier_id int references public.suppliers, qty numeric(12,3) not null, updated_at timestamptz,
  primary key (restaurant_id, sku));
create table public.deliveries (
  id bigserial primary key, order_id bigint not null references public.orders,
  courier text, route jsonb, delivered_at timestamptz);
create table public.events (
  id bigserial primary key, kind text not null, payload jsonb not null, at timestamptz not null);
create table public.feature_flags (name text primary key, enabled boolean not null, rules jsonb);
create table public.settings (key text primary key, value text not null);

-- Words for text that compresses like prose (about 3:1), not like repeated bytes.
create or replace function pg_temp.prose(n int, seed bigint) returns text language sql immutable as $$
  select string_agg(('{kimchi,bibimbap,bulgogi,japchae,tteokbokki,soup,rice,noodle,spicy,mild,order,delivery,late,cold,warm,excellent,friendly,staff,again,menu,price,portion,table,reservation,allergy,peanut,gluten,vegan,kitchen,chef,sauce,garlic,onion,pepper,sesame,tofu,beef,pork,chicken,seafood,fresh,crispy,sweet,sour,salty,bitter,umami,broth,dumpling,pancake,barbecue,grill,lunch,dinner,weekend,family,friends,birthday,party,quick,slow,wrong,missing,refund,thanks,great,good,okay,bad,the,a,and,was,with,very,but,not,too,our,we,they,it,is,for,of,on,at,this,that}'::text[])[1 + ((seed * 7919 + g * 104729) % 89)::int], ' ')
  from generate_series(1, n) g $$;

\set users (20000 * :scale)::int
\set customers (60000 * :scale)::int
\set orders (1600000 * :scale)::int
\set events (500000 * :scale)::int
\set messages (250000 * :scale)::int
\set reviews (300000 * :scale)::int
\set chunks (90000 * :scale)::int

insert into auth.users select md5('u' || g)::uuid, 'user' || g || '@foodbiz.example',
  '$2a$10$' || md5('p' || g) || md5('q' || g),
  jsonb_build_object('name', 'User ' || g, 'locale', (array['ko','en','de'])[1 + g % 3], 'plan', (array['free','pro'])[1 + g % 2]),
  timestamptz '2024-01-01' + (g || ' minutes')::interval, timestamptz '2026-01-01' + (g || ' seconds')::interval
  from generate_series(1, :users) g;
insert into auth.identities select md5('i' || g)::uuid, md5('u' || g)::uuid, (array['email','google','kakao'])[1 + g % 3],
  jsonb_build_object('sub', md5('s' || g), 'email_verified', g % 5 <> 0), timestamptz '2024-01-01' + (g || ' minutes')::interval
  from generate_series(1, :users) g;
insert into auth.sessions select md5('s' || g)::uuid, md5('u' || (1 + g % :users))::uuid,
  timestamptz '2025-01-01' + (g || ' minutes')::interval, 'Mozilla/5.0 (Linux; Android 14) FoodBiz/' || (g % 40), ('10.' || g % 250 || '.' || g % 200 || '.1')::inet
  from generate_series(1, :users * 2) g;
insert into auth.refresh_tokens (session_id, token, revoked, created_at)
  select md5('s' || (1 + g % (:users * 2)))::uuid, encode(gen_random_bytes(24), 'base64'), g % 7 = 0,
  timestamptz '2025-01-01' + (g || ' seconds')::interval from generate_series(1, :users * 4) g;
insert into auth.audit_log_entries select md5('a' || g)::uuid,
  jsonb_build_object('action', (array['login','logout','token_refreshed','user_updated'])[1 + g % 4], 'actor_id', md5('u' || g % :users), 'ip', '10.0.' || g % 250 || '.7'),
  timestamptz '2025-01-01' + (g || ' seconds')::interval from generate_series(1, :users * 5) g;

insert into storage.buckets values ('documents', 'documents', false, now());
insert into storage.objects select md5('doc' || g)::uuid, 'documents', 'dir' || lpad((g % 40)::text, 2, '0') || '/doc-' || lpad(g::text, 5, '0') || '.bin',
  md5('u' || (1 + g % :users))::uuid, jsonb_build_object('size', 100000, 'mimetype', 'application/pdf'), now()
  from generate_series(1, :docs) g;

insert into public.restaurants (name, city, cuisine, settings, created_at)
  select 'Restaurant ' || g, (array['Seoul','Busan','Berlin','Munich','Incheon'])[1 + g % 5], (array['korean','german','fusion'])[1 + g % 3],
  jsonb_build_object('opens', '10:00', 'closes', '22:00', 'delivery', g % 2 = 0), now() - (g || ' days')::interval
  from generate_series(1, 500) g;
insert into public.menus (restaurant_id, title, valid_from) select 1 + g % 500, 'Menu ' || g, date '2025-01-01' + g % 365 from generate_series(1, 1500) g;
insert into public.menu_items (menu_id, name, description, price_cents, allergens, photo)
  select 1 + g % 1500, 'Dish ' || g, pg_temp.prose(25, g), 500 + g % 4000, array['peanut','gluten'],
  case when g % 4 = 0 then gen_random_bytes(1024) || gen_random_bytes(1024) else decode(repeat(md5('photo' || g % 50), 64), 'hex') end
  from generate_series(1, 30000) g;
insert into public.customers (user_id, name, phone, preferences, created_at)
  select md5('u' || (1 + g % :users))::uuid, 'Customer ' || g, '+82-10-' || lpad((g % 10000)::text, 4, '0') || '-' || lpad((g % 9973)::text, 4, '0'),
  jsonb_build_object('spicy', g % 3, 'newsletter', g % 2 = 0, 'favourites', jsonb_build_array(1 + g % 30000, 1 + (g * 7) % 30000)),
  timestamptz '2024-01-01' + (g || ' minutes')::interval from generate_series(1, :customers) g;
insert into public.orders (restaurant_id, customer_id, status, total_cents, note, created_at)
  select 1 + g % 500, 1 + g % :customers, (array['delivered','delivered','delivered','cancelled','open'])[1 + g % 5], 1000 + g % 90000,
  case when g % 4 = 0 then pg_temp.prose(8, g) end, timestamptz '2025-01-01' + (g * 13 || ' seconds')::interval
  from generate_series(1, :orders) g;
insert into public.order_items select o, l, 1 + (o * l) % 30000, 1 + (o + l) % 3, 500 + (o * l) % 4000
  from generate_series(1, :orders) o, generate_series(1, 2) l;
insert into public.payments (order_id, provider, amount_cents, raw, paid_at)
  select g, (array['card','kakaopay','toss'])[1 + g % 3], 1000 + g % 90000, jsonb_build_object('tx', md5('tx' || g), 'status', 'captured'),
  timestamptz '2025-01-01' + (g * 13 || ' seconds')::interval from generate_series(1, :orders / 2) g;
insert into public.reviews (restaurant_id, customer_id, stars, body, created_at)
  select 1 + g % 500, 1 + g % :customers, 1 + g % 5, pg_temp.prose(30, g), timestamptz '2025-01-01' + (g * 60 || ' seconds')::interval
  from generate_series(1, :reviews) g;
insert into public.documents select md5('d' || g)::uuid, md5('doc' || (1 + g % :docs))::uuid, 1 + g % 500, 'Document ' || g,
  (array['menu','contract','invoice','manual'])[1 + g % 4], now() - (g || ' hours')::interval from generate_series(1, :docs) g;
insert into public.document_chunks (document_id, chunk, content, embedding)
  select md5('d' || (1 + g % :docs))::uuid, g, pg_temp.prose(60, g),
  case when g % 4 = 0 then gen_random_bytes(768) || gen_random_bytes(768) else decode(repeat(md5('e' || g % 97), 96), 'hex') end
  from generate_series(1, :chunks) g;
insert into public.chat_sessions select md5('c' || g)::uuid, 1 + g % :customers, timestamptz '2025-06-01' + (g || ' minutes')::interval
  from generate_series(1, :messages / 10) g;
insert into public.chat_messages (session_id, role, content, tokens, meta, created_at)
  select md5('c' || (1 + g % (:messages / 10)))::uuid, (array['user','assistant'])[1 + g % 2], pg_temp.prose(50, g), 50 + g % 400,
  jsonb_build_object('model', 'gpt-4o-mini', 'latency_ms', g % 3000), timestamptz '2025-06-01' + (g || ' seconds')::interval
  from generate_series(1, :messages) g;
insert into public.suppliers (name, contact) select 'Supplier ' || g, jsonb_build_object('email', 's' || g || '@supply.example') from generate_series(1, 200) g;
insert into public.inventory select r, 'SKU-' || s, 1 + (r + s) % 200, (r * s) % 1000 / 3.0, now() from generate_series(1, 500) r, generate_series(1, 60) s;
insert into public.deliveries (order_id, courier, route, delivered_at)
  select g, 'Courier ' || g % 300, jsonb_build_object('km', g % 20, 'stops', jsonb_build_array(g % 7, g % 11)), timestamptz '2025-01-01' + (g * 13 || ' seconds')::interval
  from generate_series(1, :orders / 3) g;
insert into public.events (kind, payload, at)
  select (array['page_view','add_to_cart','checkout','search','chat'])[1 + g % 5],
  jsonb_build_object('user', md5('u' || g % :users), 'path', '/r/' || g % 500 || '/menu', 'query', pg_temp.prose(4, g), 'ms', g % 900),
  timestamptz '2025-01-01' + (g * 5 || ' seconds')::interval from generate_series(1, :events) g;
insert into public.feature_flags select 'flag_' || g, g % 2 = 0, jsonb_build_object('percent', g % 100) from generate_series(1, 50) g;
insert into public.settings select 'key_' || g, pg_temp.prose(5, g) from generate_series(1, 100) g;

-- Indexes as an app has them: foreign keys, lookups, gin on jsonb, partial ones.
create index on auth.identities (user_id);
create index on auth.sessions (user_id);
create index on auth.refresh_tokens (session_id);
create index on auth.users using gin (raw_user_meta_data);
create index on public.menus (restaurant_id);
create index on public.menu_items (menu_id);
create index on public.customers (user_id);
create index on public.orders (restaurant_id, created_at);
create index on public.orders (customer_id);
create index orders_open on public.orders (created_at) where status = 'open';
create index on public.order_items (menu_item_id);
create index on public.payments (order_id);
create index on public.reviews (restaurant_id, created_at);
create index on public.document_chunks (document_id, chunk);
create index on public.chat_messages (session_id, created_at);
create index on public.deliveries (order_id);
create index on public.events using gin (payload jsonb_path_ops);
create index on public.events (at);
create index events_checkout on public.events (at) where kind = 'checkout';
analyze;
