using flowplane.test as db from '../db/schema';

// The service paths are S/4HANA Cloud's (service root below /sap/opu/odata4/sap), so a binding
// can point at that common prefix and a flow's entity carry the service path, as
// examples/base/bindings and flows do, or a binding can point at the service root itself.

// Read side: server-driven paging of at most 100 rows (@cds.query.limit; CAP answers with a
// relative @odata.nextLink carrying a $skiptoken).
@path: '/sap/opu/odata4/sap/api_salesorder/srvd_a2x/sap/salesorder/0001'
service SalesOrderService {
  @readonly
  @cds.query.limit: { default: 100, max: 100 }
  entity A_SalesOrderItem as projection on db.SalesOrderItems;
}

// Write side: optimistic concurrency declared by @odata.etag (OData 4.0 Part 1 8.2.4, 11.4.1.1),
// no PATCH-upsert (package.json: cds.runtime.patch_as_upsert=false), so a new key must be
// created with POST.
@path: '/sap/opu/odata4/sap/api_saleshistory/srvd_a2x/sap/saleshistory/0001'
service SalesHistoryService {
  entity SalesHistory as projection on db.SalesHistory {
    *,
    @odata.etag etag
  };
}
