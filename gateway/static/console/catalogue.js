// Catalogue 商品与券: products and coupon pools, listed and created (what campaigns pick from).

import { all, post } from "./api.js";
import { dateToIso, field, fmt, h, replace, showFieldError, table } from "./dom.js";

function form(id, fields, submitLabel, onSubmit) {
  const error = h("p", { class: "err", role: "alert" });
  const el = h("form", { id, novalidate: true }, h("div", { class: "row" }, fields), error,
    h("button", { type: "submit", class: "primary" }, submitLabel));
  el.addEventListener("submit", async (e) => {
    e.preventDefault();
    showFieldError(el, null, error);
    try {
      await onSubmit();
      el.reset();
    } catch (err) { showFieldError(el, err, error); }
  });
  return el;
}

export async function view(ctx) {
  const products = h("div");
  const coupons = h("div");
  async function load() {
    const [p, c] = await Promise.all([all("/products"), all("/coupons")]);
    replace(products, table([
      { label: "#", get: (x) => String(x.id), num: true }, { label: "SKU", get: (x) => x.sku },
      { label: "Name 名称", get: (x) => x.name }, { label: "Price 价格", get: (x) => fmt.money(x.price), num: true },
      { label: "URL", get: (x) => x.url || "—" }], p, { empty: "No products 暂无商品" }));
    replace(coupons, table([
      { label: "#", get: (x) => String(x.id), num: true }, { label: "Name 名称", get: (x) => x.name },
      { label: "Value 面值", get: (x) => fmt.money(x.value), num: true },
      { label: "Valid 有效期", get: (x) => `${fmt.dt(x.valid_from)} – ${fmt.dt(x.valid_to)}` },
      { label: "Codes 码", get: (x) => fmt.int(x.codes), num: true }, { label: "Issued 已发", get: (x) => fmt.int(x.issued), num: true },
      { label: "Redeemed 已核销", get: (x) => fmt.int(x.redeemed), num: true }], c, { empty: "No coupons 暂无优惠券" }));
  }

  const sku = h("input", { name: "sku" });
  const pname = h("input", { name: "name" });
  const price = h("input", { name: "price", placeholder: "399.00", inputmode: "decimal" });
  const url = h("input", { name: "url", type: "url", placeholder: "https://…" });
  const productForm = form("product-form", [field("SKU", sku, "sku"), field("Name 名称", pname, "name"),
    field("Price 价格", price, "price"), field("URL", url, "url")], "Add product 添加商品", async () => {
    await post("/products", { sku: sku.value.trim(), name: pname.value.trim(), price: price.value.trim(),
      ...(url.value.trim() ? { url: url.value.trim() } : {}) });
    await load();
  });

  const cname = h("input", { name: "name" });
  const value = h("input", { name: "value", placeholder: "20.00", inputmode: "decimal" });
  const from = h("input", { name: "valid_from", type: "date" });
  const to = h("input", { name: "valid_to", type: "date" });
  const generate = h("input", { name: "generate", type: "number", min: 1, value: 100 });
  const couponForm = form("coupon-form", [field("Name 名称", cname, "name"), field("Value 面值", value, "value"),
    field("Valid from 起", from, "valid_from"), field("Valid to (inclusive) 止", to, "valid_to"),
    field("Generate codes 生成券码", generate, "generate")], "Add coupon 添加优惠券", async () => {
    await post("/coupons", { name: cname.value.trim(), value: value.value.trim(), valid_from: dateToIso(from.value),
      valid_to: dateToIso(to.value, 1), generate: Number(generate.value) || undefined });
    await load();
  });

  await load();
  replace(ctx.root, h("h2", {}, "Catalogue 商品与券"),
    h("div", { class: "card" }, h("h3", {}, "Products 商品"), products, productForm),
    h("div", { class: "card" }, h("h3", {}, "Coupons 优惠券"), coupons, couponForm));
}
